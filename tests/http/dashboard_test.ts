/**
 * The dashboard's files as the relay serves them: public (they hold no data), under a strict
 * Content-Security-Policy, nothing from elsewhere. The dashboard at work is tests/e2e/dashboard_test.ts.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { startTestRelay } from "../helpers/relay.ts";

const TOKEN = "dashboard-api-token-0123456789";

Deno.test("GET / and /assets/* serve the dashboard without a token, under a strict CSP", async () => {
  await using relay = await startTestRelay({ http: { api_token: TOKEN } });
  const expected = {
    "/": "text/html; charset=utf-8",
    "/assets/app.js": "text/javascript; charset=utf-8",
    "/assets/style.css": "text/css; charset=utf-8",
  };
  for (const [path, type] of Object.entries(expected)) {
    const response = await fetch(relay.httpUrl(path));
    const body = await response.text();
    assertEquals(response.status, 200, path);
    assertEquals(response.headers.get("content-type"), type, path);
    assertEquals(response.headers.get("x-content-type-options"), "nosniff", path);
    assertEquals(
      response.headers.get("content-security-policy"),
      "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; " +
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
      path,
    );
    // Nothing from another origin, nothing inline the CSP would refuse.
    assert(!/https?:\/\//.test(body.replaceAll("http://www.w3.org/2000/svg", "")), path);
    assert(!/<script>|<style>| style=| on[a-z]+=/.test(body), path);
  }
  // Names an object inherits are no assets either.
  for (const name of ["nothing.js", "constructor", "toString", "__proto__"]) {
    const missing = await fetch(relay.httpUrl(`/assets/${name}`));
    assertEquals(missing.status, 404, name);
    await missing.body?.cancel();
  }
  // The data behind it still needs the token.
  const streams = await fetch(relay.httpUrl("/api/streams"));
  assertEquals(streams.status, 401);
  await streams.body?.cancel();
});
