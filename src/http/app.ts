/**
 * The HTTP API (Hono). `createApp(deps)` builds the routes; serving them is the caller's job, so
 * tests call `app.request()` without a socket. Read endpoints render a read-model snapshot; control
 * endpoints steer the hub and the relay manager. Stream keys arrive in paths (the caller knows
 * them) but leave only redacted. An unexpected error becomes a 500 in `onError`, logged without
 * the key.
 *
 * @module
 */

import { Hono } from "hono";
import type { Context, MiddlewareHandler } from "hono";
import { bodyLimit } from "hono/body-limit";
import { cors } from "hono/cors";
import { HTTPException } from "hono/http-exception";
import type { z } from "zod";
import { InvalidDestination, validateDestination } from "../control_plane/destination.ts";
import { log } from "../log.ts";
import type { StreamHub } from "../media/live_stream.ts";
import { ThumbnailBusyError, type Thumbnailer } from "../media/thumbnail.ts";
import type { RelayManager } from "../relay/relay_manager.ts";
import { redactKey } from "../redact.ts";
import { renderMetrics } from "./metrics.ts";
import { describeDestination, type ReadModel } from "./read_model.ts";
import {
  type DestinationChanges,
  type StreamRelay,
  SupersededRefresh,
} from "../relay/stream_relay.ts";
import { DASHBOARD_ASSETS, DASHBOARD_CSP, INDEX_HTML } from "./dashboard/dashboard_assets.ts";
import { type RelayEvents, serveEvents } from "./events.ts";
import { AddDestinationBodySchema, ReplaceDestinationsBodySchema } from "./schemas.ts";
import { streamId } from "../stream_id.ts";
import { tokensEqual } from "./token.ts";

/** What the API reads and steers; the service provides it. */
export interface AppDeps {
  /** What the read endpoints render: `/health`, `/stats`, `/metrics`, `/api/streams…`. */
  readModel: ReadModel;
  /** What the control endpoints steer. */
  hub: Pick<StreamHub, "get" | "end" | "live">;
  manager: Pick<RelayManager, "relayFor" | "refreshDestinations">;
  /** What `GET /api/events` serves; without it the route answers 404. */
  events?: RelayEvents;
  /** What `GET /api/streams/{key}/thumbnail.jpg` decodes with; without it, 404. */
  thumbnails?: Thumbnailer;
  http: {
    allowOrigin: string;
    apiToken?: string;
    allowUnauthenticatedControl: boolean;
  };
}

/** The first problem of a failed zod parse, as the API reports it. */
function badRequest(c: Context, error: z.ZodError) {
  const issue = error.issues[0]!;
  // An unknown key is named itself, wherever it is (`destinations.0.command`).
  const path = [
    ...issue.path.map(String),
    ...(issue.code === "unrecognized_keys" ? [issue.keys.join(",")] : []),
  ];
  const field = path.join(".") || "(body)";
  return c.json({ error: `invalid field ${field}: ${issue.message}`, field }, 400);
}

/** The request's JSON body checked against `schema`, or the 400 reply that says what is wrong. */
async function parseBody<T extends z.ZodType>(
  c: Context,
  schema: T,
): Promise<{ data: z.output<T> } | { reply: Response }> {
  let raw: unknown;
  try {
    raw = await c.req.json();
  } catch {
    return { reply: c.json({ error: "body is not JSON", field: "(body)" }, 400) };
  }
  const body = schema.safeParse(raw);
  return body.success ? { data: body.data } : { reply: badRequest(c, body.error) };
}

const httpLog = log("http");

/** The largest request body the API reads. */
const MAX_BODY_BYTES = 256 * 1024;

/** The reply to a replacement or refresh: the new list with statuses, and what happened by id. */
function describeChanges(
  relay: StreamRelay,
  changes: DestinationChanges,
  malformed: string[] = [],
) {
  return {
    destinations: relay.destinations().map(describeDestination),
    added: changes.added,
    removed: changes.removed,
    restarted: changes.restarted,
    kept: changes.kept,
    skipped: [
      ...malformed,
      ...changes.rejected.map((rejected) => `${rejected.id}: ${rejected.reason}`),
    ],
  };
}

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();
  const { apiToken, allowUnauthenticatedControl } = deps.http;
  app.use("*", cors({ origin: deps.http.allowOrigin }));
  // The largest body the API takes (a PUT of every destination) is a few KiB: anything near this
  // is abuse, refused before it is read into memory.
  app.use(
    "/api/*",
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: (c) => c.json({ error: `request body over ${MAX_BODY_BYTES / 1024} KiB` }, 413),
    }),
  );

  /** The dashboard's page and files: public (they hold no data), under a strict CSP. */
  const page = (c: Context, body: string, type: string) => {
    c.header("Content-Type", type);
    c.header("Content-Security-Policy", DASHBOARD_CSP);
    c.header("X-Content-Type-Options", "nosniff");
    c.header("Referrer-Policy", "no-referrer");
    c.header("Cache-Control", "no-cache");
    return c.body(body);
  };
  app.get("/", (c) => page(c, INDEX_HTML, "text/html; charset=utf-8"));
  app.get("/assets/:name", (c) => {
    const name = c.req.param("name");
    // Own names only: "constructor" and the like come with every object.
    const asset = Object.hasOwn(DASHBOARD_ASSETS, name) ? DASHBOARD_ASSETS[name] : undefined;
    return asset ? page(c, asset.body, asset.type) : c.json({ error: "not found" }, 404);
  });

  /** With a token configured, everything but /health and the dashboard's files needs it. */
  const requireToken: MiddlewareHandler = async (c, next) => {
    if (
      apiToken === undefined || c.req.path === "/health" || c.req.path === "/" ||
      c.req.path.startsWith("/assets/")
    ) return await next();
    const header = c.req.header("authorization") ?? "";
    // The scheme is case-insensitive (RFC 9110, 11.1): `bearer` is as good as `Bearer`.
    const presented = header.match(/^bearer +(.*)$/i)?.[1] ?? "";
    if (!(await tokensEqual(presented, apiToken))) {
      c.header("WWW-Authenticate", 'Bearer realm="neustream"');
      return c.json({ error: "missing or wrong bearer token" }, 401);
    }
    return await next();
  };
  app.use("*", requireToken);

  /**
   * Control endpoints change what streamers see: never open by accident. Without a token, a web
   * page the operator visits could call them as well as a curl on the host (a text/plain POST
   * needs no CORS preflight, and `allow_origin = "*"` passes any): only the page's Origin header
   * tells them apart, so a request from another origin than this server's (or `allow_origin`, when
   * that names one) is refused. With a token the token is the proof: a page does not have it.
   */
  const control: MiddlewareHandler = async (c, next) => {
    if (apiToken === undefined && !allowUnauthenticatedControl) {
      return c.json({
        error:
          "control endpoints are disabled: set [http] api_token, or allow_unauthenticated_control = true",
      }, 403);
    }
    const origin = c.req.header("origin");
    if (apiToken === undefined && origin !== undefined && !trustedOrigin(c, origin)) {
      return c.json({
        error:
          "control request from another origin refused: without [http] api_token, control is for this server's own pages and non-browser clients",
      }, 403);
    }
    // A body must say it is JSON: no form a page can send without a preflight does. Read here
    // (bodyLimit bounds it; Hono keeps it for the handler) since only its bytes tell a restart's
    // empty POST from one with something to say.
    const type = c.req.header("content-type") ?? "";
    const hasBody = (await c.req.arrayBuffer()).byteLength > 0;
    if (hasBody && !/^application\/json\s*(;|$)/i.test(type)) {
      return c.json({ error: "a request body must be Content-Type: application/json" }, 415);
    }
    return await next();
  };
  /**
   * `allow_origin` when it names one; else this server's own pages, reached by an address that
   * cannot be rebound: a page on a DNS name its owner points at 127.0.0.1 (DNS rebinding) is
   * "same origin" by Host and Origin alike. A server reached by name needs `allow_origin`.
   */
  const trustedOrigin = (c: Context, origin: string): boolean => {
    if (deps.http.allowOrigin !== "*" && origin === deps.http.allowOrigin) return true;
    let from: URL;
    let to: URL;
    try {
      from = new URL(origin);
      to = new URL(c.req.url);
    } catch {
      return false; // "null" (a sandboxed page, a file) or garbage: not this server
    }
    const literal = to.hostname === "localhost" || to.hostname.startsWith("[") ||
      /^\d{1,3}(\.\d{1,3}){3}$/.test(to.hostname);
    return literal && from.host === to.host;
  };

  /**
   * A path's `{key}`: the stream key itself, or the stream's public id (how the dashboard, which
   * never sees keys, names a stream).
   */
  const keyOf = (param: string): string => {
    if (deps.hub.get(param) !== undefined) return param;
    return deps.hub.live().find((stream) => streamId(stream.key) === param)?.key ?? param;
  };
  const liveStream = (param: string) => {
    const stream = deps.hub.get(keyOf(param));
    return stream !== undefined && stream.state !== "idle" ? stream : undefined;
  };
  /** The relay of the live stream the request's `:key` names (a key or a stream id). */
  const liveRelay = (c: Context) => {
    const stream = liveStream(c.req.param("key") ?? "");
    return stream ? deps.manager.relayFor(stream.key) : undefined;
  };
  const notLive = (c: Context) => c.json({ error: "stream not live" }, 404);

  app.get("/health", (c) => {
    const snapshot = deps.readModel.snapshot();
    const serving = snapshot.rtmp.serving;
    return c.json({
      status: serving ? "ok" : "unavailable",
      version: snapshot.version,
      uptime_seconds: Math.floor(snapshot.uptime_seconds),
      active_streams: snapshot.streams.length,
      ...(serving ? {} : { reason: "RTMP listener is not serving" }),
    }, serving ? 200 : 503);
  });

  app.get("/stats", (c) => {
    const snapshot = deps.readModel.snapshot();
    const destinations = snapshot.streams.flatMap((stream) => stream.destinations);
    return c.json({
      active_streams: snapshot.streams.map((stream) => stream.stream_key),
      total_streams: snapshot.total_streams,
      connections: snapshot.rtmp.connections,
      total_connections: snapshot.rtmp.total_connections,
      bytes_in: snapshot.rtmp.bytes_in,
      bytes_out: snapshot.rtmp.bytes_out + snapshot.destination_bytes_out,
      destinations: destinations.length,
      ffmpeg_processes: destinations.filter((destination) => destination.status.pid !== null)
        .length,
      memory: snapshot.memory,
      uptime_seconds: Math.floor(snapshot.uptime_seconds),
    });
  });

  app.get("/metrics", (c) => {
    c.header("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    return c.body(renderMetrics(deps.readModel.snapshot()));
  });

  app.get("/api/streams", (c) => {
    return c.json({ streams: deps.readModel.snapshot().streams });
  });

  app.get("/api/events", (c) => {
    if (deps.events === undefined) return c.json({ error: "not found" }, 404);
    return serveEvents(c, deps.events);
  });

  app.get("/api/streams/:key/thumbnail.jpg", async (c) => {
    const stream = liveStream(c.req.param("key"));
    if (stream === undefined || deps.thumbnails === undefined) return notLive(c);
    let jpeg;
    try {
      jpeg = await deps.thumbnails.get(stream.key, stream.gop);
    } catch (error) {
      if (!(error instanceof ThumbnailBusyError)) throw error;
      c.header("Retry-After", "1");
      return c.json({ error: error.message }, 503);
    }
    if (jpeg === undefined) return c.json({ error: "no video keyframe yet" }, 404);
    c.header("Content-Type", "image/jpeg");
    c.header("Cache-Control", "private, max-age=5");
    return c.body(jpeg.slice().buffer);
  });

  app.get("/api/streams/forwarding/:key", (c) => {
    const stream = deps.readModel.stream(keyOf(c.req.param("key")));
    if (stream === undefined) return notLive(c);
    return c.json({ destinations: stream.destinations });
  });

  app.delete("/api/streams/:key", control, (c) => {
    const stream = liveStream(c.req.param("key"));
    if (stream === undefined) return notLive(c);
    // No reconnect window: the publisher is told and disconnected, the stream ends now.
    deps.hub.end(stream, "ended through the HTTP API");
    return c.json({ stream_key: redactKey(stream.key), ended: true });
  });

  app.post("/api/streams/:key/destinations", control, async (c) => {
    const relay = liveRelay(c);
    if (relay === undefined) return notLive(c);
    const body = await parseBody(c, AddDestinationBodySchema);
    if ("reply" in body) return body.reply;
    let destination;
    try {
      destination = validateDestination({ ...body.data, enabled: true });
    } catch (error) {
      if (!(error instanceof InvalidDestination)) throw error;
      return c.json({ error: error.message, field: error.field }, 400);
    }
    try {
      return c.json(describeDestination(relay.add(destination)), 201);
    } catch (error) {
      if (relay.stopped) return notLive(c); // it ended since we looked it up
      return c.json({ error: (error as Error).message }, 409);
    }
  });

  app.delete("/api/streams/:key/destinations/:id", control, async (c) => {
    const relay = liveRelay(c);
    if (relay === undefined) return notLive(c);
    const removed = await relay.remove(c.req.param("id"));
    if (!removed) return c.json({ error: "no such destination" }, 404);
    return c.json({ id: c.req.param("id"), removed: true });
  });

  app.put("/api/streams/:key/destinations", control, async (c) => {
    const relay = liveRelay(c);
    if (relay === undefined) return notLive(c);
    const body = await parseBody(c, ReplaceDestinationsBodySchema);
    if ("reply" in body) return body.reply;
    const records = body.data.destinations;
    if (records.length > relay.maxDestinations) {
      return c.json({
        error:
          `invalid field destinations: more than max_destinations_per_stream (${relay.maxDestinations})`,
        field: "destinations",
      }, 400);
    }
    // All or nothing: a list with one bad target changes nothing.
    for (const [index, record] of records.entries()) {
      try {
        validateDestination(record);
      } catch (error) {
        if (!(error instanceof InvalidDestination)) throw error;
        return c.json({ error: error.message, field: `destinations.${index}.${error.field}` }, 400);
      }
    }
    let changes;
    try {
      changes = await relay.replaceDestinations(records);
    } catch (error) {
      // The stream ended since we looked it up.
      if (error instanceof RangeError && relay.stopped) return notLive(c);
      throw error;
    }
    return c.json(describeChanges(relay, changes));
  });

  app.post("/api/streams/:key/destinations/refresh", control, async (c) => {
    const stream = liveStream(c.req.param("key"));
    if (stream === undefined) return notLive(c);
    const key = stream.key;
    let refreshed;
    try {
      refreshed = await deps.manager.refreshDestinations(key);
    } catch (error) {
      if (error instanceof SupersededRefresh) return c.json({ error: error.message }, 409);
      // The stream ended while the refresh waited its turn behind other changes.
      if (error instanceof RangeError && (deps.manager.relayFor(key)?.stopped ?? true)) {
        return notLive(c);
      }
      return c.json({ error: `cannot fetch destinations: ${(error as Error).message}` }, 502);
    }
    const relay = deps.manager.relayFor(key);
    if (refreshed === undefined || relay === undefined) return notLive(c);
    return c.json(describeChanges(relay, refreshed, refreshed.malformed));
  });

  for (const action of ["enable", "disable"] as const) {
    app.post(`/api/streams/:key/destinations/:id/${action}`, control, async (c) => {
      const relay = liveRelay(c);
      if (relay === undefined) return notLive(c);
      const id = c.req.param("id");
      const enabled = action === "enable";
      if (!(await relay.setEnabled(id, enabled))) {
        return c.json({ error: "no such destination" }, 404);
      }
      return c.json({ id, enabled });
    });
  }

  app.post("/api/streams/:key/destinations/:id/restart", control, async (c) => {
    const relay = liveRelay(c);
    const supervisor = relay?.get(c.req.param("id"));
    if (supervisor === undefined) {
      return c.json({ error: "no such destination on a live stream" }, 404);
    }
    await supervisor.restart();
    return c.json({ id: supervisor.destination.id, restarted: true });
  });

  app.notFound((c) => c.json({ error: "not found" }, 404));
  app.onError((error, c) => {
    // Hono's own replies (HTTPException) stand as they are; anything else is our bug.
    if (error instanceof HTTPException) return error.getResponse();
    // The path's stream key is the secret most likely to be in a message: redact it.
    const key = c.req.param("key");
    const reason = key ? error.message.replaceAll(key, redactKey(key)) : error.message;
    httpLog.error("{method} {route} failed: {reason}", {
      method: c.req.method,
      route: c.req.routePath,
      reason,
    });
    return c.json({ error: "internal error" }, 500);
  });
  return app;
}
