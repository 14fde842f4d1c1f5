import { DestinationSchema, validateDestination } from "../../src/control_plane/destination.ts";
import { buildFfmpegArgs, ffmpegLogRedactor } from "../../src/relay/ffmpeg_args.ts";
import { assert, assertEquals } from "../helpers/assert.ts";

const destination = (rtmp_url: string) =>
  validateDestination(
    DestinationSchema.parse({ id: "d", platform: "custom", rtmp_url, stream_key: "k-1234" }),
  );

/** The options between `-flvflags no_duration_filesize` and the output's `-f flv URL`. */
function outputTail(args: string[]): string[] {
  return args.slice(args.indexOf("no_duration_filesize") + 1);
}

Deno.test("buildFfmpegArgs() verifies rtmps destinations against the system roots", () => {
  const args = buildFfmpegArgs(destination("rtmps://live-api-s.facebook.com:443/rtmp"), {
    ioTimeoutSeconds: 10,
  });
  assertEquals(outputTail(args), [
    "-tls_verify",
    "1",
    "-f",
    "flv",
    "rtmps://live-api-s.facebook.com:443/rtmp/k-1234",
  ]);
});

Deno.test("buildFfmpegArgs() gives rtmps destinations the CA bundle when there is one", () => {
  const args = buildFfmpegArgs(destination("rtmps://ingest.example.com/app"), {
    ioTimeoutSeconds: 10,
    caFile: "/var/lib/neustream/rtmps-ca-bundle.pem",
  });
  assertEquals(outputTail(args), [
    "-tls_verify",
    "1",
    "-ca_file",
    "/var/lib/neustream/rtmps-ca-bundle.pem",
    "-f",
    "flv",
    "rtmps://ingest.example.com/app/k-1234",
  ]);
});

Deno.test("buildFfmpegArgs() adds no TLS option to rtmp destinations", () => {
  const args = buildFfmpegArgs(destination("rtmp://a.rtmp.youtube.com/live2"), {
    ioTimeoutSeconds: 10,
    caFile: "/var/lib/neustream/rtmps-ca-bundle.pem",
  });
  assertEquals(outputTail(args), ["-f", "flv", "rtmp://a.rtmp.youtube.com/live2/k-1234"]);
  assert(!args.includes("-tls_verify") && !args.includes("-ca_file"));
});

Deno.test("buildFfmpegArgs() makes FFmpeg read what the destination sends after every packet", () => {
  for (
    const url of ["rtmp://a.rtmp.youtube.com/live2", "rtmps://live-api-s.facebook.com:443/rtmp"]
  ) {
    const args = buildFfmpegArgs(destination(url), { ioTimeoutSeconds: 10 });
    const at = args.indexOf("-rtmp_flush_interval");
    assert(at > args.indexOf("pipe:0"), `${url}: an output option`);
    assertEquals(args[at + 1], "1", url);
  }
});

Deno.test("ffmpegLogRedactor() hides the destination's key in what FFmpeg prints, wherever the key is written", () => {
  const cases: { what: string; rtmp_url: string; stream_key: string; line: string }[] = [
    {
      what: "key apart, in the output URL",
      rtmp_url: "rtmp://a.rtmp.youtube.com/live2",
      stream_key: "abcd-efgh-ijkl-mnop",
      line: "Output #0, flv, to 'rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop':",
    },
    {
      what: "key apart, alone in a server's reply",
      rtmp_url: "rtmp://a.rtmp.youtube.com/live2",
      stream_key: "abcd-efgh-ijkl-mnop",
      line: "[rtmp @ 0x55d0] Server error: abcd-efgh-ijkl-mnop is already publishing",
    },
    {
      what: "key in rtmp_url, in the output URL",
      rtmp_url: "rtmp://live.example.com/app/sk_live_0123456789",
      stream_key: "",
      line: "Output #0, flv, to 'rtmp://live.example.com/app/sk_live_0123456789':",
    },
    {
      what: "key in rtmp_url, alone in a server's reply",
      rtmp_url: "rtmp://live.example.com/app/sk_live_0123456789",
      stream_key: "",
      line: "[rtmp @ 0x55d0] Server error: sk_live_0123456789 is already publishing",
    },
    {
      what: "key in rtmp_url after app and instance",
      rtmp_url: "rtmps://live.example.com:443/app/instance/sk_live_0123456789",
      stream_key: "",
      line: "[rtmp @ 0x55d0] Server error: stream sk_live_0123456789 not found in app/instance",
    },
    {
      what: "key in rtmp_url with a query, whole and without it",
      rtmp_url: "rtmp://live.example.com/app/sk_live_0123456789?token=t0k3n-secret",
      stream_key: "",
      line: "publish sk_live_0123456789?token=t0k3n-secret refused; sk_live_0123456789 unknown",
    },
  ];
  const expected = [
    "Output #0, flv, to 'rtmp://a.rtmp.youtube.com/live2/abcd…(19)':",
    "[rtmp @ 0x55d0] Server error: abcd…(19) is already publishing",
    "Output #0, flv, to 'rtmp://live.example.com/app/sk_l…(18)':",
    "[rtmp @ 0x55d0] Server error: sk_l…(18) is already publishing",
    "[rtmp @ 0x55d0] Server error: stream sk_l…(18) not found in app/instance",
    "publish sk_l…(37) refused; sk_l…(18) unknown",
  ];
  for (const [index, { what, rtmp_url, stream_key, line }] of cases.entries()) {
    const d = validateDestination(
      DestinationSchema.parse({ id: "d", platform: "custom", rtmp_url, stream_key }),
    );
    const out = ffmpegLogRedactor(d)(line);
    assertEquals(out, expected[index], what);
    assert(!out.includes("0123456789") && !out.includes("efgh"), `${what}: ${out}`);
  }
});

Deno.test("ffmpegLogRedactor() leaves lines without the key, and keys too short to tell, as they are", () => {
  const noName = validateDestination(
    DestinationSchema.parse({ id: "d", rtmp_url: "rtmp://live.example.com/app", stream_key: "" }),
  );
  const line = "Stream #0:0: Video: h264 (High), yuv420p(progressive), 1280x720, 30 fps";
  assertEquals(ffmpegLogRedactor(noName)(line), line);
  const short = validateDestination(
    DestinationSchema.parse({
      id: "d",
      rtmp_url: "rtmp://live.example.com/app/abc",
      stream_key: "",
    }),
  );
  assertEquals(ffmpegLogRedactor(short)("frame=  abc"), "frame=  abc");
});

Deno.test("buildFfmpegArgs() takes an upper-case scheme, given to FFmpeg lower-cased", () => {
  const cases: [string, string, string[]][] = [
    ["RTMP://127.0.0.1:1935/app", "rtmp://127.0.0.1:1935/app/k-1234", []],
    ["Rtmp://Host.Example/Live", "rtmp://Host.Example/Live/k-1234", []],
    ["RTMPS://ingest.example.com/App", "rtmps://ingest.example.com/App/k-1234", [
      "-tls_verify",
      "1",
    ]],
  ];
  for (const [url, pushUrl, tls] of cases) {
    const args = buildFfmpegArgs(destination(url), { ioTimeoutSeconds: 10 });
    assertEquals(outputTail(args), [...tls, "-f", "flv", pushUrl], url);
  }
});
