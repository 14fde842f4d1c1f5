import { redactDestination, redactKey, sanitizeUrl } from "../src/redact.ts";
import { assertEquals } from "./helpers/assert.ts";

Deno.test("redactKey() shows a short prefix and the length, never the key", () => {
  assertEquals(redactKey("live_123456789_abcdefghij"), "live…(25)");
  assertEquals(redactKey("abcdef"), "ab…(6)");
  assertEquals(redactKey("ab"), "…(2)");
  assertEquals(redactKey(""), "(empty)");
});

Deno.test("sanitizeUrl() drops user info and query", () => {
  assertEquals(sanitizeUrl("rtmp://user:pass@host:1935/app?token=secret"), "rtmp://host:1935/app");
  assertEquals(sanitizeUrl("not a url"), "(unparsable URL, 9 characters)");
  assertEquals(
    redactDestination("rtmp://a.rtmp.youtube.com/live2/", "xxxx-yyyy"),
    "rtmp://a.rtmp.youtube.com/live2/xxx…(9)",
  );
});
