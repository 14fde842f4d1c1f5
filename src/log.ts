/**
 * The one logger: text lines for a terminal, JSON Lines when `[logging] format = "json"`, both on
 * stderr (systemd's journal takes it). Every record about a stream carries a `stream` property with
 * the key already redacted; callers pass `redactKey(key)`, never a key.
 *
 * @module
 */

import {
  configure,
  getLogger,
  jsonLinesFormatter,
  type Logger,
  type LogLevel,
  type LogRecord,
  type Sink,
} from "@logtape/logtape";

export type { Logger, LogRecord };

export type LogFormat = "text" | "json";

/** Levels the configuration accepts, mapped to the logger's (Rust's `warn` and `trace` too). */
export const LOG_LEVELS = ["trace", "debug", "info", "warn", "warning", "error"] as const;
export type ConfigLogLevel = typeof LOG_LEVELS[number];

function toLogLevel(level: ConfigLogLevel): LogLevel {
  return level === "warn" ? "warning" : level;
}

function formatValue(value: unknown): string {
  if (typeof value === "string") return /[\s"=]/.test(value) ? JSON.stringify(value) : value;
  if (value instanceof Error) return JSON.stringify(value.message);
  return JSON.stringify(value) ?? String(value);
}

/** `2026-11-21T10:00:00.000Z INFO  rtmp: publish accepted stream=abcd…(16) remote=...` */
export function textFormatter(record: LogRecord): string {
  const time = new Date(record.timestamp).toISOString();
  const level = record.level.toUpperCase().padEnd(7);
  const category = record.category.slice(1).join(".") || record.category.join(".");
  let message = "";
  for (const part of record.message) {
    message += typeof part === "string" ? part : formatValue(part);
  }
  // Properties already shown in the message text are not repeated after it.
  const template = typeof record.rawMessage === "string" ? record.rawMessage : "";
  const props = Object.entries(record.properties)
    .filter(([key]) => !template.includes(`{${key}}`))
    .map(([key, value]) => `${key}=${formatValue(value)}`)
    .join(" ");
  return `${time} ${level} ${category}: ${message}${props ? " " + props : ""}\n`;
}

/** syslog priorities, as journald reads them from a line's `<N>` prefix. */
const SYSLOG_PRIORITY: Record<LogLevel, number> = {
  fatal: 2,
  error: 3,
  warning: 4,
  info: 6,
  debug: 7,
  trace: 7,
};

/**
 * Whether stderr goes to systemd's journal: systemd sets `JOURNAL_STREAM` for a unit whose output
 * it collects. journald then files each line at the priority its `<N>` prefix gives (and strips
 * it); without one, every line, errors included, would be filed as info.
 */
function toJournal(): boolean {
  try {
    return Deno.env.get("JOURNAL_STREAM") !== undefined;
  } catch {
    return false; // not allowed to look: not told it is the journal
  }
}

function stderrSink(format: LogFormat): Sink {
  const encoder = new TextEncoder();
  const formatter = format === "json" ? jsonLinesFormatter : textFormatter;
  const journal = toJournal();
  return (record) => {
    const line = formatter(record);
    // Synchronous so that the last lines before an exit are never lost.
    Deno.stderr.writeSync(
      encoder.encode(journal ? `<${SYSLOG_PRIORITY[record.level]}>${line}` : line),
    );
  };
}

export interface LoggingOptions {
  level: ConfigLogLevel;
  format: LogFormat;
  /** Extra sink (tests collect records with it). */
  extraSink?: Sink;
  /** Whether to write to stderr (default true). */
  stderr?: boolean;
}

/** Sets up logging for the process; may be called again (tests, SIGHUP). */
export async function setupLogging(options: LoggingOptions): Promise<void> {
  const sinks: Record<string, Sink> = {};
  if (options.stderr ?? true) sinks.stderr = stderrSink(options.format);
  if (options.extraSink) sinks.extra = options.extraSink;
  await configure({
    reset: true,
    sinks,
    loggers: [
      {
        category: ["neustream"],
        lowestLevel: toLogLevel(options.level),
        sinks: Object.keys(sinks),
      },
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: Object.keys(sinks) },
    ],
  });
}

/** The logger for one part of the relay, e.g. `log("rtmp")`. */
export function log(...category: string[]): Logger {
  return getLogger(["neustream", ...category]);
}
