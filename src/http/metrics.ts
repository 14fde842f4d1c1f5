/**
 * `/metrics` in the Prometheus text exposition format (version 0.0.4), rendered from a read-model
 * snapshot. Stream keys appear only redacted (as the snapshot has them), as label values.
 *
 * @module
 */

import type { RelayDestinationStatus } from "../relay/stream_relay.ts";
import type { Snapshot } from "./read_model.ts";

/**
 * A label value as the text format has it: backslash, double quote and line feed escaped. Other
 * control characters (a destination id may hold any) have no escape there, and a raw carriage
 * return breaks common parsers: each becomes U+FFFD.
 */
export function escapeLabel(value: string): string {
  return value.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n")
    // deno-lint-ignore no-control-regex
    .replace(/[\u0000-\u0009\u000b-\u001f\u007f]/g, "\ufffd");
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

export function renderMetrics(snapshot: Snapshot): string {
  const out = new MetricsText();
  const { rtmp } = snapshot;

  out.family("neustream_up", "gauge", "1 while the RTMP listener is serving.");
  out.sample("neustream_up", rtmp.serving ? 1 : 0);
  out.family("neustream_uptime_seconds", "gauge", "Seconds since the relay started.");
  out.sample("neustream_uptime_seconds", snapshot.uptime_seconds);
  out.family(
    "neustream_streams_active",
    "gauge",
    "Streams live, their publisher connected or in its reconnect window.",
  );
  out.sample("neustream_streams_active", snapshot.streams.length);
  out.family("neustream_streams_total", "counter", "Streams that went live since start.");
  out.sample("neustream_streams_total", snapshot.total_streams);
  out.family("neustream_publishers", "gauge", "Connections publishing.");
  out.sample("neustream_publishers", rtmp.publishers);
  out.family("neustream_players", "gauge", "Connections playing.");
  out.sample("neustream_players", rtmp.players);
  out.family("neustream_connections", "gauge", "Open RTMP connections.");
  out.sample("neustream_connections", rtmp.connections);
  out.family("neustream_rtmp_bytes_in_total", "counter", "Bytes received over RTMP.");
  out.sample("neustream_rtmp_bytes_in_total", rtmp.bytes_in);
  out.family(
    "neustream_rtmp_bytes_out_total",
    "counter",
    "Bytes sent over RTMP to clients (players; protocol replies to publishers).",
  );
  out.sample("neustream_rtmp_bytes_out_total", rtmp.bytes_out);
  out.family(
    "neustream_destination_bytes_out_total",
    "counter",
    "Bytes written to destination FFmpeg processes.",
  );
  out.sample("neustream_destination_bytes_out_total", snapshot.destination_bytes_out);

  const destinations = snapshot.streams.flatMap((stream) =>
    stream.destinations.map((destination) => ({
      stream: stream.stream_key,
      // Redacted keys can look alike (`live…(25)` for two keys with one prefix): the stream's id
      // keeps each series apart, as the API does.
      streamId: stream.id,
      status: destination.status,
    }))
  );
  const perDestination: [
    string,
    "gauge" | "counter",
    string,
    (s: RelayDestinationStatus) => number,
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
    [
      "neustream_destination_input_bitrate_kbps",
      "gauge",
      "What the stream offers the destination, in kbit/s.",
      (s) => s.input_bitrate_kbps,
    ],
    [
      "neustream_destination_output_bitrate_kbps",
      "gauge",
      "What the engine wrote to the destination, in kbit/s.",
      (s) => s.output_bitrate_kbps,
    ],
    [
      "neustream_destination_out_bytes_total",
      "counter",
      "Bytes the engine wrote to the destination.",
      (s) => s.bytes_out,
    ],
    [
      "neustream_destination_queue_lag_seconds",
      "gauge",
      "Age of the oldest packet queued for the destination.",
      (s) => s.queue_lag_ms / 1000,
    ],
    [
      "neustream_destination_dropped_bytes_total",
      "counter",
      "Bytes dropped because the destination fell behind.",
      (s) => s.dropped_bytes,
    ],
    [
      "neustream_destination_availability_ratio",
      "gauge",
      "Seconds connected over seconds since the destination was added.",
      (s) => s.availability,
    ],
    [
      "neustream_destination_reconnects_total",
      "counter",
      "Connections after the first one.",
      (s) => s.reconnects,
    ],
    [
      "neustream_destination_attempt",
      "gauge",
      "The current connection attempt since the destination last connected (from 1).",
      (s) => s.attempt,
    ],
    [
      "neustream_destination_next_attempt_seconds",
      "gauge",
      "Seconds until the next attempt while waiting in backoff, else 0.",
      (s) =>
        s.next_attempt_at === null
          ? 0
          : Math.max(0, (Date.parse(s.next_attempt_at) - Date.now()) / 1000),
    ],
  ];
  for (const [name, type, help, value] of perDestination) {
    out.family(name, type, help);
    for (const { stream, streamId, status } of destinations) {
      out.sample(name, value(status), {
        stream,
        stream_id: streamId,
        destination: status.id,
        platform: status.platform,
        engine: status.engine,
      });
    }
  }
  out.family(
    "neustream_destination_state",
    "gauge",
    "1 for the destination's state, with the kind of its last failure (none while it has none).",
  );
  for (const { stream, streamId, status } of destinations) {
    out.sample("neustream_destination_state", 1, {
      stream,
      stream_id: streamId,
      destination: status.id,
      platform: status.platform,
      engine: status.engine,
      state: status.state,
      failure: status.failure ?? "none",
    });
  }

  const stats = snapshot.control_plane;
  if (stats !== null) {
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
  if (snapshot.stream_ends_pending !== null) {
    out.family(
      "neustream_control_plane_stream_ends_pending",
      "gauge",
      "Stream-end reports waiting for the control plane (kept on disk across restarts).",
    );
    out.sample("neustream_control_plane_stream_ends_pending", snapshot.stream_ends_pending);
  }
  return out.toString();
}
