/**
 * The operator dashboard in a real browser (Debian's Chromium, driven by playwright-core) against
 * the real relay, a real FFmpeg publisher and real sinks: sign in, a stream appears within 3 s of
 * publishing, a destination restarted from its button goes down and back up, a destination whose
 * server refuses the key shows it, all under the dashboard's strict CSP without a script error;
 * and a stream whose destinations the control plane fails to list says why until it lists them.
 * `DASHBOARD_SCREENSHOT=/path.png` saves the screenshot the README shows.
 */

import puppeteer, { type Browser, type Page } from "puppeteer-core";
import { assert, assertEquals } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { freePort, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { NginxSink } from "../helpers/sinks.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";

const KEY = "dashboard-stream-key-0001";
const DEST_KEY = "dashboard-destination-key-0001";
const TOKEN = "dashboard-api-token-0123456789";
const CHROMIUM = "/usr/bin/chromium";

/** Headless Chromium with a profile of its own under `dir`, closed (and reaped) on dispose. */
async function openBrowser(dir: string): Promise<{ browser: Browser } & AsyncDisposable> {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    pipe: true,
    userDataDir: dir,
    defaultViewport: { width: 1280, height: 760 },
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return { browser, [Symbol.asyncDispose]: () => browser.close() };
}

/**
 * Waits until an element matching `selector` has text matching `pattern`. (Page code as text: the
 * tests are type-checked without the DOM library.)
 */
async function waitForText(page: Page, selector: string, pattern: RegExp, timeout = 15_000) {
  const texts = `[...document.querySelectorAll(${
    JSON.stringify(selector)
  })].map((e) => e.textContent)`;
  try {
    await page.waitForFunction(`${texts}.some((text) => ${pattern}.test(text))`, {
      timeout,
      polling: 50,
    });
  } catch (error) {
    // Say what the page showed instead, and what happened on it.
    const shown = await page.evaluate(
      `JSON.stringify({ shown: ${texts}, events: ${
        texts.replace(JSON.stringify(selector), '"#events li"')
      } }, null, 1)`,
    );
    throw new Error(`${selector} never showed ${pattern}: ${shown}`, { cause: error });
  }
}

Deno.test("the dashboard signs in, shows a live stream within 3 s, restarts a destination and shows a refusal", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 60, gop: 30, size: "640x360" });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const rtmpPort = freePort();
  await using relay = await startTestRelay({
    rtmp: { port: rtmpPort },
    http: { api_token: TOKEN },
    streams: [{
      key: KEY,
      destinations: [
        { id: "yt", platform: "youtube", rtmp_url: nginx.baseUrl, stream_key: DEST_KEY },
        // Our own server as an ingest that does not know the key: it refuses the publish.
        {
          id: "refused",
          platform: "twitch",
          rtmp_url: `rtmp://127.0.0.1:${rtmpPort}/live`,
          stream_key: "unknown-key-0123456789",
        },
      ],
    }],
  });
  await using chromium = await openBrowser(`${dir.path}/profile`);
  const page = await chromium.browser.newPage();
  const problems: string[] = [];
  page.on("pageerror", (error) => problems.push(`page error: ${(error as Error).message}`));
  page.on("console", (message) => {
    if (message.type() === "error" && !/status of 40[14]/.test(message.text())) {
      problems.push(`console: ${message.text()}`);
    }
  });

  await page.goto(relay.httpUrl("/"));
  await page.waitForSelector("#sign-in", { visible: true });
  await page.type("#token", "not-the-token-0000000000");
  await page.locator("#sign-in button[type=submit]").click();
  await waitForText(page, "#sign-in-error", /not accepted/);
  await page.type("#token", TOKEN);
  await page.locator("#sign-in button[type=submit]").click();
  await page.waitForSelector("#dashboard", { visible: true });
  await waitForText(page, "#connection", /^live$/);
  await waitForText(page, "#summary", /^0 live streams, 0 destinations$/);

  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  // From the moment the stream is live (what the dashboard promises), not from FFmpeg's spawn,
  // whose start-up on a busy machine is no part of it.
  await waitFor(() => relay.service.hub.get(KEY)?.state === "live", "the stream live", 15_000);
  const liveAt = performance.now();
  await page.waitForSelector("article.stream", { timeout: 10_000 });
  const appearedMs = performance.now() - liveAt;
  assert(appearedMs < 3_000, `the stream appeared after ${Math.round(appearedMs)} ms`);
  await waitForText(page, "article.stream .stream-key", /^dash…\(25\)$/);

  await page.waitForSelector('[data-destination-id="yt"] .state[data-state="connected"]', {
    timeout: 15_000,
  });
  // Refused by its server: retrying, the failure's kind shown as `rejected`, and the error says so.
  await waitForText(page, '[data-destination-id="refused"] .state', /rejected/);
  await page.waitForSelector('[data-destination-id="refused"] .state[data-state="retrying"]', {
    timeout: 15_000,
  });
  await waitForText(page, '[data-destination-id="refused"] .last-error', /^last error: ./);

  // The thumbnail: the stream's picture, at the stream's size.
  await page.waitForFunction("document.querySelector('img.thumb')?.naturalWidth === 640", {
    timeout: 15_000,
  });
  const screenshot = Deno.env.get("DASHBOARD_SCREENSHOT");
  if (screenshot) {
    // Long enough for the output-bitrate charts to draw a line.
    await new Promise((resolve) => setTimeout(resolve, 20_000));
    await page.screenshot({ path: screenshot as `${string}.png` });
  }

  // Restart from its button: down (`starting`, or `retrying` on the way), then up again, on a new
  // FFmpeg. Every state the badge takes is recorded: a restart may last less than one look.
  await page.evaluate(`(() => {
    const badge = document.querySelector('[data-destination-id="yt"] .state');
    const states = window.ytStates = [];
    // Each record's old value, then the value now: one callback may carry several changes.
    new MutationObserver((records) => {
      for (const record of records) states.push(record.oldValue);
      states.push(badge.dataset.state);
    }).observe(badge, { attributes: true, attributeOldValue: true, attributeFilter: ["data-state"] });
  })()`);
  const pidBefore = relay.service.manager.relayFor(KEY)?.get("yt")?.status().pid;
  // Locator clicks wait for the button to stand still: a card's text may reflow as numbers change.
  const [restarted] = await Promise.all([
    page.waitForResponse((response) => response.url().endsWith("/destinations/yt/restart")),
    page.locator('[data-destination-id="yt"] button.restart').click(),
  ]);
  assertEquals(restarted.status(), 200);
  await page.waitForFunction(
    "/(starting|retrying)( [a-z]+)* connected/.test(window.ytStates.join(' '))",
    { timeout: 15_000, polling: 50 },
  );
  await waitForText(page, '[data-destination-id="yt"] .state', /^connected$/);
  await waitForText(page, '[data-destination-id="yt"] .fact-restarts', /^restarts 1/);
  const pidAfter = relay.service.manager.relayFor(KEY)?.get("yt")?.status().pid;
  assert(pidAfter !== undefined && pidAfter !== pidBefore, "a new FFmpeg runs");

  // On a phone: one column, nothing wider than the screen.
  await page.setViewport({ width: 390, height: 844 });
  const widths = await page.evaluate(
    "({ page: document.documentElement.scrollWidth, " +
      "card: document.querySelector('article.stream').getBoundingClientRect().width })",
  ) as { page: number; card: number };
  assert(widths.page <= 390 && widths.card <= 390, `fits a phone: ${JSON.stringify(widths)}`);

  // End the stream (two clicks: the second confirms): its card goes.
  await page.locator("article.stream button.end-stream").click();
  await waitForText(page, "article.stream button.end-stream", /^Confirm/);
  await page.locator("article.stream button.end-stream").click();
  await page.waitForSelector("article.stream", { hidden: true, timeout: 10_000 });
  assertEquals(relay.service.hub.get(KEY)?.state ?? "idle", "idle");
  await publisher.wait();

  const html = await page.content();
  assert(!html.includes(KEY) && !html.includes(DEST_KEY), "no key reaches the page");
  assertEquals(problems, []);
});

Deno.test("the dashboard shows why a live stream has no destinations while the control plane fails to list them", async () => {
  await using dir = await tempDir();
  await using cp = new FakeControlPlane({ forwarding: () => ({ status: 503 }) });
  await using relay = await startTestRelay({
    http: { api_token: TOKEN },
    control_plane: { url: cp.url, timeout_seconds: 1, retry_attempts: 0 },
  });
  await using publisher = await TestRtmpClient.connect(relay.rtmpPort);
  await publisher.handshake();
  assertEquals((await publisher.publish(KEY)).code, "NetStream.Publish.Start");
  await using chromium = await openBrowser(`${dir.path}/profile`);
  const page = await chromium.browser.newPage();
  await page.goto(relay.httpUrl("/"));
  await page.waitForSelector("#sign-in", { visible: true });
  await page.type("#token", TOKEN);
  await page.locator("#sign-in button[type=submit]").click();
  await waitForText(
    page,
    "article.stream .stream-error",
    /^cannot fetch destinations: control plane answered HTTP 503$/,
  );
  cp.behaviour.forwarding = () => ({ body: { destinations: [] } }); // it answers again
  await waitForText(page, "article.stream .stream-error", /^$/, 20_000);
  const hidden = await page.evaluate(
    "getComputedStyle(document.querySelector('article.stream .stream-error')).display",
  );
  assertEquals(hidden, "none", "no empty line once the failure is over");
});
