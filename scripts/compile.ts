/**
 * `deno task compile`: one executable, `dist/neustream`, with the narrowest permissions baked in.
 * `deno compile` needs Deno's runtime (denort) for the target; it downloads it unless DENORT_BIN
 * names a local copy. Where neither works, we say exactly that instead of a stack trace.
 *
 * Environment: DENORT_BIN (path to denort), NEUSTREAM_FFMPEG (FFmpeg path baked into
 * --allow-run, default "ffmpeg"), NEUSTREAM_CONFIG_DIR (readable config directory, default
 * /etc/neustream).
 */

import denoJson from "../deno.json" with { type: "json" };
import { ENV_VARIABLES } from "../src/config.ts";

const ffmpeg = Deno.env.get("NEUSTREAM_FFMPEG") || "ffmpeg";
const configDir = Deno.env.get("NEUSTREAM_CONFIG_DIR") || "/etc/neustream";
const denort = Deno.env.get("DENORT_BIN");
const output = "dist/neustream";

const args = [
  "compile",
  "--output",
  output,
  "--allow-net",
  `--allow-read=${configDir},config.toml`,
  `--allow-env=${ENV_VARIABLES.join(",")}`,
  `--allow-run=${ffmpeg}`,
  "main.ts",
];

console.error(
  `compiling neustream ${denoJson.version} to ${output}${denort ? ` (denort: ${denort})` : ""}`,
);
const result = await new Deno.Command("deno", { args, stdout: "inherit", stderr: "piped" })
  .output();
// deno prints ANSI colours and a backtrace; keep the numbered causes ("0: Could not find ...").
// deno-lint-ignore no-control-regex
const stderr = new TextDecoder().decode(result.stderr).replace(/\x1b\[[0-9;]*m/g, "");
const causes = [...stderr.matchAll(/^\s*\d+: (.+)$/gm)].map((m) => m[1]!).filter((c) =>
  c !== "<unknown>"
);
if (result.success) {
  console.error(
    `built ${output}: permissions --allow-net --allow-read=${configDir},config.toml --allow-env=${
      ENV_VARIABLES.join(",")
    } --allow-run=${ffmpeg}`,
  );
  Deno.exit(0);
}
if (/denort|dl\.deno\.land|base binary/i.test(stderr)) {
  console.error(
    denort
      ? `deno compile could not use DENORT_BIN=${denort}: ${causes.join(": ")}`
      : "deno compile needs the Deno runtime (denort) for this platform: it could not be downloaded and DENORT_BIN is not set. " +
        `Fetch denort-${Deno.build.target}.zip for Deno ${Deno.version.deno} where the internet is reachable, unzip it, ` +
        "and run again with DENORT_BIN=/path/to/denort.",
  );
} else {
  console.error(`deno compile failed: ${causes.join(": ") || stderr.trim()}`);
}
Deno.exit(1);
