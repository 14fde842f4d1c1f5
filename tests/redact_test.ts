import { validateDestination } from "../src/control_plane/destination.ts";
import { describeDestination } from "../src/http/read_model.ts";
import type { RelayDestinationStatus } from "../src/relay/stream_relay.ts";
import { redactDestination, redactKey, redactUrl } from "../src/redact.ts";
import { assert, assertEquals } from "./helpers/assert.ts";

Deno.test("redactKey() shows a short prefix and the length, never the key", () => {
  assertEquals(redactKey("live_123456789_abcdefghij"), "live…(25)");
  assertEquals(redactKey("abcdef"), "ab…(6)");
  assertEquals(redactKey("ab"), "…(2)");
  assertEquals(redactKey(""), "(empty)");
});

Deno.test("redactUrl() hides a key written in the URL's path", () => {
  // [url, shown, the secret that must not show]
  const cases: [string, string, string | undefined][] = [
    [
      "rtmp://127.0.0.1:22937/live2/urlKEYzyxwvutsrqponmlk9876",
      "rtmp://127.0.0.1:22937/live2/urlK…(26)",
      "KEYzyxwvutsrqponmlk9876",
    ],
    [
      "rtmps://host:443/app/instance/KEY12345678",
      "rtmps://host:443/app/instance/KEY…(11)",
      "12345678",
    ],
    ["rtmp://host/app/inst/a-key/b-key", "rtmp://host/app/inst/a-k…(11)", "key/b-key"],
    ["rtmp://host/live/stream-key/", "rtmp://host/live/str…(10)", "am-key"],
    [
      "http://youtube.com/live2/destSECRET0987654321",
      "http://youtube.com/live2/dest…(20)",
      "SECRET",
    ],
    ["rtmp:host/live/a-key-here", "rtmp:host…(20)", "a-key-here"],
    // FFmpeg's split: a colon before the second slash keeps it in the name (`parsePublishUrl`).
    ["rtmp://h/app/ab:cd/ef", "rtmp://h/app/ab…(8)", "cd/ef"],
  ];
  for (const [url, shown, secret] of cases) {
    const redacted = redactUrl(url);
    assertEquals(redacted, shown, url);
    if (secret) assert(!redacted.includes(secret), `${redacted} shows ${secret}`);
  }
});

Deno.test("redactUrl() hides a key or token written in the query string", () => {
  const cases: [string, string][] = [
    ["rtmp://host/live?token=secret123", "rtmp://host/live?toke…(15)"],
    ["rtmp://host/live/key123456?auth=abcdef", "rtmp://host/live/key1…(21)"],
    ["rtmp://host/live?token=t1/key", "rtmp://host/live?toke…(12)"],
    ["rtmp://host/live#fragment-key", "rtmp://host/live#frag…(12)"],
  ];
  for (const [url, shown] of cases) assertEquals(redactUrl(url), shown, url);
});

Deno.test("redactUrl() leaves a URL with only an application as it is, less user info", () => {
  const cases: [string, string][] = [
    ["rtmp://host/live", "rtmp://host/live"],
    ["rtmp://a.rtmp.youtube.com/live2/", "rtmp://a.rtmp.youtube.com/live2/"],
    ["rtmp://user:pass@host:1935/app", "rtmp://host:1935/app"],
    ["rtmp://[::1]:1935/live", "rtmp://[::1]:1935/live"],
    ["rtmp://host", "rtmp://host"],
    ["rtmp://host/", "rtmp://host"],
    ["not a url", "(unparsable URL, 9 characters)"],
  ];
  for (const [url, shown] of cases) assertEquals(redactUrl(url), shown, url);
  // With the key given separately, the whole path is the application.
  assertEquals(
    redactUrl("rtmp://host/app/instance", { keyInPath: false }),
    "rtmp://host/app/instance",
  );
  assertEquals(
    redactUrl("rtmp://host/app?auth=secret1", { keyInPath: false }),
    "rtmp://host/app?auth…(12)",
  );
});

Deno.test("redactDestination() joins the application and the redacted key", () => {
  const cases: [string, string, string][] = [
    ["rtmp://a.rtmp.youtube.com/live2/", "xxxx-yyyy", "rtmp://a.rtmp.youtube.com/live2/xxx…(9)"],
    ["rtmp://host/app/instance", "key-123456", "rtmp://host/app/instance/key…(10)"],
    ["rtmp://host/live", "", "rtmp://host/live"],
  ];
  for (const [url, key, shown] of cases) assertEquals(redactDestination(url, key), shown, url);
});

/** A destination whose key is written in `rtmp_url` itself, `stream_key` left empty. */
const KEY_IN_URL = "urlKEYzyxwvutsrqponmlk9876";
const URL_WITH_KEY = `rtmp://127.0.0.1:22937/live2/${KEY_IN_URL}`;
const URL_WITH_KEY_SHOWN = `rtmp://127.0.0.1:22937/live2/${redactKey(KEY_IN_URL)}`;

Deno.test("redactDestination() hides a key written in rtmp_url when stream_key is empty", () => {
  assertEquals(redactDestination(URL_WITH_KEY, ""), URL_WITH_KEY_SHOWN);
});

Deno.test("describeDestination() and displayUrl hide a key written in rtmp_url", () => {
  const destination = validateDestination({
    id: "k",
    platform: "custom",
    rtmp_url: URL_WITH_KEY,
    stream_key: "",
    enabled: true,
  });
  const view = describeDestination({
    destination,
    status: () => ({ url: destination.displayUrl }) as RelayDestinationStatus,
  });
  // `displayUrl` is what log lines (`url=`) and `status.url` show; the view is the API's.
  assertEquals([destination.displayUrl, view.rtmp_url, view.status.url, view.stream_key], [
    URL_WITH_KEY_SHOWN,
    URL_WITH_KEY_SHOWN,
    URL_WITH_KEY_SHOWN,
    "(empty)",
  ]);
  assert(
    !JSON.stringify(view).includes(KEY_IN_URL.slice(4)),
    "no part of the key beyond its prefix",
  );
});
