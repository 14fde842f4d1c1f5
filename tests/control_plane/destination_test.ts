import {
  DestinationSchema,
  joinPushUrl,
  selectDestinations,
  validateDestination,
} from "../../src/control_plane/destination.ts";
import { assertEquals, assertThrows } from "../helpers/assert.ts";

const record = (rtmp_url: string, stream_key = "abcd-efgh-ijkl", id = "1") =>
  DestinationSchema.parse({ id, platform: "custom", rtmp_url, stream_key });

Deno.test("joinPushUrl() joins base and key with exactly one slash", () => {
  assertEquals(
    joinPushUrl("rtmp://a.rtmp.youtube.com/live2", "k"),
    "rtmp://a.rtmp.youtube.com/live2/k",
  );
  assertEquals(joinPushUrl("rtmp://host/app/", "k"), "rtmp://host/app/k");
  assertEquals(joinPushUrl("rtmp://host/app//", "/k"), "rtmp://host/app/k");
  assertEquals(joinPushUrl("rtmp://host/app/key-in-url", ""), "rtmp://host/app/key-in-url");
});

Deno.test("validateDestination() accepts rtmp and rtmps URLs and redacts the key for display", () => {
  const destination = validateDestination(
    record("rtmps://live-api-s.facebook.com:443/rtmp", "FB-123456789"),
  );
  assertEquals(destination.pushUrl, "rtmps://live-api-s.facebook.com:443/rtmp/FB-123456789");
  assertEquals(destination.displayUrl, "rtmps://live-api-s.facebook.com:443/rtmp/FB-1…(12)");
});

Deno.test("validateDestination() keeps hostile values away from FFmpeg", () => {
  const bad: [string, string, string][] = [
    ["file:///etc/passwd", "k", "not allowed"],
    ["-y", "k", "not a URL"],
    ["rtmp://host/live key", "k", "whitespace"],
    ["rtmp://host/live\nkey", "k", "control characters"],
    ["http://host/live", "k", "not allowed"],
    ["rtmp:///live", "k", "no host"],
    ["rtmp://host/live", "-f", "must not start"],
    ["rtmp://host/live", "a b", "whitespace"],
  ];
  for (const [url, key, text] of bad) {
    assertThrows(() => validateDestination(record(url, key)), TypeError, text);
  }
});

Deno.test("selectDestinations() skips invalid ones and caps the count", () => {
  const selection = selectDestinations([
    record("rtmp://a/live", "k1", "a"),
    record("file:///etc/passwd", "k2", "b"),
    record("rtmp://c/live", "k3", "c"),
    record("rtmp://d/live", "k4", "d"),
    record("rtmp://a/live", "k5", "a"),
  ], 2);
  assertEquals(selection.accepted.map((d) => d.id), ["a", "c"]);
  assertEquals(selection.rejected.map((r) => r.id), ["b", "d", "a"]);
});

Deno.test("selectDestinations() skips a destination with an unknown engine, the others go out", () => {
  const parse = (fields: Record<string, unknown>) =>
    DestinationSchema.parse({ rtmp_url: "rtmp://host/live", stream_key: "abcd", ...fields });
  const selection = selectDestinations([
    parse({ id: "typo", engine: "gstreamer" }),
    parse({ id: "native", engine: "native", video_track: 1, audio_track: 0 }),
    parse({ id: "default" }),
  ], 10);
  assertEquals(selection.rejected, [{
    id: "typo",
    reason: 'destination "typo": unknown engine "gstreamer" (ffmpeg or native)',
  }]);
  assertEquals(
    selection.accepted.map((d) => [d.id, d.engine, d.videoTrack, d.audioTrack]),
    [["native", "native", 1, 0], ["default", undefined, undefined, undefined]],
  );
});

Deno.test("validateDestination() lower-cases the scheme and keeps the rest byte for byte", () => {
  // RFC 3986 makes the scheme case-insensitive; keys, paths and queries are not.
  const cases: [string, string, string][] = [
    ["RTMP://127.0.0.1:1935/app", "Key-AbC", "rtmp://127.0.0.1:1935/app/Key-AbC"],
    [
      "RTMPS://Live-API-S.Facebook.com:443/Rtmp",
      "FB-AbC",
      "rtmps://Live-API-S.Facebook.com:443/Rtmp/FB-AbC",
    ],
    ["rTmP://host/App/Inst?Token=AbC&x=Y", "", "rtmp://host/App/Inst?Token=AbC&x=Y"],
    ["Rtmp://User:PaSS@host/Live", "KeY", "rtmp://User:PaSS@host/Live/KeY"],
    ["rtmps://host/live/", "/KeY%2F", "rtmps://host/live/KeY%2F"],
  ];
  for (const [url, key, pushUrl] of cases) {
    const destination = validateDestination(record(url, key));
    assertEquals(destination.pushUrl, pushUrl, url);
    assertEquals(destination.rtmpUrl, url.replace(/^[a-z]+/i, (s) => s.toLowerCase()), url);
    assertEquals(destination.streamKey, key, url);
    assertEquals(destination.displayUrl.split("//")[0], pushUrl.split("//")[0], url);
  }
  // Only the scheme's case changed: the same target, so a running FFmpeg is not restarted for it.
  assertEquals(
    validateDestination(record("RTMP://host/live", "k")),
    validateDestination(record("rtmp://host/live", "k")),
  );
});
