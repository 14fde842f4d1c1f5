/**
 * `/metrics` in the Prometheus text exposition format (version 0.0.4). Stream keys appear only
 * redacted, as label values.
 *
 * @module
 */

import { redactKey } from "../redact.ts";
import type { AppDeps } from "./app.ts";

function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function labels(values: Record<string, string>): string {
  const parts = Object.entries(values).map(([key, value]) => `${key}="${escapeLabel(value)}"`);
  return parts.length > 0 ? `{${parts.join(",")}}` : "";
}

class MetricsText {
  #lines: string[] = [];

  family(name: string, type: "gauge" | "counter" | "summary", help: string): void {
    this.#lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  }

  sample(name: string, value: number, labelValues: Record<string, string> = {}): void {
    this.#lines.push(`${name}${labels(labelValues)} ${Number.isFinite(value) ? value : 0}`);
  }

  toString(): string {
    return this.#lines.join("\n") + "\n";
  }
}

export function renderMetrics(deps: AppDeps): string {
  const out = new MetricsText();
  const live = deps.hub.live();
  const sessions = [...deps.rtmp.sessions];

  out.family("neustream_up", "gauge", "1 while the RTMP listener is serving.");
  out.sample("neustream_up", deps.rtmp.serving ? 1 : 0);
  out.family("neustream_uptime_seconds", "gauge", "Seconds since the relay started.");
  out.sample("neustream_uptime_seconds", (Date.now() - deps.startedAt.getTime()) / 1000);
  out.family("neustream_streams_active", "gauge", "Streams with a live publisher.");
  out.sample("neustream_streams_active", live.length);
  out.family("neustream_streams_total", "counter", "Streams that went live since start.");
  out.sample("neustream_streams_total", deps.hub.totalStreams);
  out.family("neustream_publishers", "gauge", "Connections publishing.");
  out.sample("neustream_publishers", sessions.filter((s) => s.role === "publisher").length);
  out.family("neustream_players", "gauge", "Connections playing.");
  out.sample("neustream_players", sessions.filter((s) => s.role === "player").length);
  out.family("neustream_connections", "gauge", "Open RTMP connections.");
  out.sample("neustream_connections", sessions.length);
  out.family("neustream_rtmp_bytes_in_total", "counter", "Bytes received over RTMP.");
  out.sample("neustream_rtmp_bytes_in_total", deps.rtmp.bytesIn);
  out.family("neustream_rtmp_bytes_out_total", "counter", "Bytes sent over RTMP to players.");
  out.sample("neustream_rtmp_bytes_out_total", deps.rtmp.bytesOut);
  out.family(
    "neustream_destination_bytes_out_total",
    "counter",
    "Bytes written to destination FFmpeg processes.",
  );
  out.sample("neustream_destination_bytes_out_total", deps.manager.destinationBytesSent);

  const destinations = deps.manager.relays().flatMap((relay) =>
    relay.list().map((supervisor) => ({ key: relay.stream.key, status: supervisor.status() }))
  );
  const perDestination: [
    string,
    "gauge" | "counter",
    string,
    (s: typeof destinations[number]["status"]) => number,
  ][] = [
    [
      "neustream_destination_connected",
      "gauge",
      "1 while the destination's FFmpeg is connected.",
      (s) => (s.connected ? 1 : 0),
    ],
    [
      "neustream_destination_sent_bytes_total",
      "counter",
      "Bytes written to the destination's FFmpeg.",
      (s) => s.bytes_sent,
    ],
    [
      "neustream_destination_sent_packets_total",
      "counter",
      "Packets written to the destination's FFmpeg.",
      (s) => s.packets_sent,
    ],
    [
      "neustream_destination_dropped_packets_total",
      "counter",
      "Packets dropped because the destination fell behind.",
      (s) => s.dropped_packets,
    ],
    [
      "neustream_destination_restarts_total",
      "counter",
      "Times the destination's FFmpeg was restarted.",
      (s) => s.restarts,
    ],
    [
      "neustream_destination_errors_total",
      "counter",
      "Times the destination's FFmpeg failed.",
      (s) => s.error_count,
    ],
  ];
  for (const [name, type, help, value] of perDestination) {
    out.family(name, type, help);
    for (const { key, status } of destinations) {
      out.sample(name, value(status), {
        stream: redactKey(key),
        destination: status.id,
        platform: status.platform,
      });
    }
  }

  const stats = deps.manager.controlPlaneStats();
  if (stats !== undefined) {
    out.family(
      "neustream_control_plane_calls_total",
      "counter",
      "Control-plane calls by kind and outcome.",
    );
    for (const [call, s] of Object.entries(stats)) {
      out.sample("neustream_control_plane_calls_total", s.ok, { call, outcome: "ok" });
      out.sample("neustream_control_plane_calls_total", s.failed, { call, outcome: "failed" });
    }
    out.family(
      "neustream_control_plane_call_duration_seconds",
      "summary",
      "Time spent in control-plane calls, retries included.",
    );
    for (const [call, s] of Object.entries(stats)) {
      out.sample("neustream_control_plane_call_duration_seconds_sum", s.totalSeconds, { call });
      out.sample("neustream_control_plane_call_duration_seconds_count", s.ok + s.failed, { call });
    }
  }
  return out.toString();
}
