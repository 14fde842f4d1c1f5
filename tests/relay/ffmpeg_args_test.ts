import { DestinationSchema, validateDestination } from "../../src/control_plane/destination.ts";
import { buildFfmpegArgs } from "../../src/relay/ffmpeg_args.ts";
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
