/**
 * The dashboard's script: plain JavaScript run as is by the browser (no framework, no build). It
 * signs in with the API token (kept in sessionStorage, sent as a bearer header, never in a URL),
 * follows `GET /api/events` through fetch (EventSource cannot send the header) and renders every
 * stream and destination from the events. Destination fields it does not know are shown as they
 * are, so new status fields appear without a change here. Text only through `textContent`.
 *
 * @module
 */

export const APP_JS = String.raw`"use strict";
(function () {
  var TOKEN_KEY = "neustream-api-token";
  var HISTORY_MS = 5 * 60 * 1000;
  var THUMBNAIL_MS = 5000;
  var KNOWN = ["id", "platform", "url", "state", "connected", "bytes_sent", "packets_sent",
    "dropped_packets", "error_count", "last_error", "restarts", "started_at", "connected_at",
    "bitrate_kbps", "pid", "engine", "next_attempt_at", "attempt", "failure",
    "input_bitrate_kbps", "output_bitrate_kbps", "bytes_out", "queue_lag_ms", "dropped_bytes",
    "drop_episodes", "live_seconds", "published_seconds", "availability", "time_to_live_ms",
    "reconnects"];
  var COLOURS = { connected: "ok", starting: "warn", retrying: "bad", degraded: "warn",
    stopped: "idle", disabled: "idle", exhausted: "bad", failed: "bad" };

  var token = sessionStorage.getItem(TOKEN_KEY) || "";
  var streams = new Map();
  var history = new Map();
  var thumbs = new Map();
  var serverOffsetMs = 0;
  var events = null;
  var wantEvents = false;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function headers() {
    return token ? { Authorization: "Bearer " + token } : {};
  }
  function api(method, path) {
    return fetch(path, { method: method, headers: headers(), cache: "no-store" });
  }
  function serverNow() { return Date.now() + serverOffsetMs; }
  function seconds(total) {
    total = Math.max(0, Math.floor(total));
    var h = Math.floor(total / 3600), m = Math.floor(total / 60) % 60, s = total % 60;
    return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
  }
  function kbps(value) {
    return value >= 1000 ? (value / 1000).toFixed(1) + " Mb/s" : value + " kb/s";
  }

  // Sign-in

  function show(section) {
    $("sign-in").hidden = section !== "sign-in";
    $("dashboard").hidden = section !== "dashboard";
  }
  async function start() {
    var response;
    try {
      response = await api("GET", "/api/streams");
    } catch (error) {
      setConnection("offline");
      setTimeout(start, 3000);
      return;
    }
    if (response.status === 401) {
      stopEvents();
      show("sign-in");
      $("sign-out").hidden = true;
      if (token) $("sign-in-error").textContent = "That token was not accepted.";
      return;
    }
    var body = await response.json();
    $("sign-in-error").textContent = "";
    $("sign-out").hidden = !token;
    show("dashboard");
    applySnapshot({ at: new Date().toISOString(), streams: body.streams });
    startEvents();
  }
  $("sign-in-form").addEventListener("submit", function (event) {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  $("sign-out").addEventListener("click", function () {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    stopEvents();
    streams.clear();
    render();
    start();
  });

  // Events: Server-Sent Events read through fetch, so the token travels in a header.

  function setConnection(state) {
    $("connection").dataset.state = state;
    $("connection").textContent = state;
  }
  function stopEvents() {
    wantEvents = false;
    if (events) events.abort();
    events = null;
  }
  async function startEvents() {
    if (events) return;
    wantEvents = true;
    var controller = new AbortController();
    events = controller;
    try {
      var response = await fetch("/api/events", { headers: headers(), signal: controller.signal });
      if (response.status === 401) {
        events = null;
        start();
        return;
      }
      if (!response.ok || !response.body) throw new Error("event stream: HTTP " + response.status);
      setConnection("live");
      var reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      var buffer = "";
      for (;;) {
        var chunk = await reader.read();
        if (chunk.done) break;
        buffer += chunk.value.replace(/\r\n?/g, "\n");
        var end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          handleMessage(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    if (events === controller) events = null;
    if (wantEvents) {
      setConnection("reconnecting");
      setTimeout(function () { if (wantEvents) startEvents(); }, 2000);
    }
  }
  function handleMessage(text) {
    var data = [];
    text.split("\n").forEach(function (line) {
      if (line.indexOf("data:") === 0) data.push(line.slice(5).replace(/^ /, ""));
    });
    if (data.length === 0) return;
    var event = JSON.parse(data.join("\n"));
    if (event.at) serverOffsetMs = Date.parse(event.at) - Date.now();
    if (event.type === "snapshot") applySnapshot(event);
    else if (event.type === "stream_started") {
      streams.set(event.stream.id, event.stream);
      logEvent(event.stream.stream_key + " went live");
      render();
    } else if (event.type === "stream_ended") {
      streams.delete(event.stream_id);
      logEvent(event.stream_key + " ended");
      render();
    } else if (event.type === "destination_state") {
      var stream = streams.get(event.stream_id);
      if (stream) {
        stream.destinations = stream.destinations.filter(function (d) {
          return d.id !== event.destination_id;
        });
        if (event.status) {
          // The state the event names, until the next event or snapshot (a restart's "starting"
          // may last less than one look).
          var status = Object.assign({}, event.status, { state: event.to });
          stream.destinations.push({ id: event.destination_id, status: status,
            platform: event.status.platform });
        }
      }
      logEvent(event.destination_id + " of " + event.stream_key + ": " + (event.from || "new") +
        " → " + (event.to || "removed") + (event.reason ? " (" + event.reason + ")" : ""));
      render();
    }
  }
  function applySnapshot(snapshot) {
    var at = Date.parse(snapshot.at);
    streams = new Map();
    snapshot.streams.forEach(function (stream) {
      streams.set(stream.id, stream);
      stream.destinations.forEach(function (destination) {
        var key = stream.id + "/" + destination.id;
        var samples = history.get(key) || [];
        samples.push([at, outputKbps(destination.status)]);
        while (samples.length && samples[0][0] < at - HISTORY_MS) samples.shift();
        history.set(key, samples);
      });
    });
    render();
  }
  function logEvent(text) {
    var item = el("li", "", new Date().toLocaleTimeString() + " " + text);
    var list = $("events");
    list.insertBefore(item, list.firstChild);
    while (list.children.length > 12) list.removeChild(list.lastChild);
  }

  // Rendering: one card per stream, one row per destination, kept across renders (keyed), so a
  // button being clicked is never replaced under the pointer.

  function keyed(parent, selector, key, create) {
    var node = parent.querySelector(selector + '[data-key="' + CSS.escape(key) + '"]');
    if (!node) {
      node = create();
      node.dataset.key = key;
      parent.appendChild(node);
    }
    node.dataset.seen = "1";
    return node;
  }
  function sweep(parent, selector) {
    parent.querySelectorAll(selector).forEach(function (node) {
      if (node.dataset.seen !== "1") node.remove();
      else delete node.dataset.seen;
    });
  }
  function setText(node, selector, text) {
    var target = node.querySelector(selector);
    if (target.textContent !== text) target.textContent = text;
  }

  function render() {
    var list = $("streams");
    var total = 0;
    streams.forEach(function (stream, id) {
      total += stream.destinations.length;
      var card = keyed(list, ".stream", id, function () { return createStream(stream); });
      updateStream(card, stream);
    });
    sweep(list, ".stream");
    thumbs.forEach(function (thumb, id) {
      if (!streams.has(id)) {
        URL.revokeObjectURL(thumb.url || "");
        thumbs.delete(id);
      }
    });
    $("empty").hidden = streams.size > 0;
    $("summary").textContent = streams.size + " live stream" + (streams.size === 1 ? "" : "s") +
      ", " + total + " destination" + (total === 1 ? "" : "s");
  }

  function createStream(stream) {
    var card = el("article", "stream");
    card.dataset.streamId = stream.id;
    var head = el("div", "stream-head");
    var img = el("img", "thumb");
    img.alt = "thumbnail";
    head.appendChild(img);
    var info = el("div", "stream-info");
    info.appendChild(el("h3", "stream-key"));
    var facts = el("div", "facts");
    ["state", "uptime", "bitrate", "video", "players"].forEach(function (name) {
      facts.appendChild(el("span", "fact-" + name));
    });
    info.appendChild(facts);
    info.appendChild(el("p", "last-error stream-error"));
    var actions = el("div", "stream-actions");
    actions.appendChild(confirmButton("End stream", "end-stream", function () {
      return act("DELETE", "/api/streams/" + encodeURIComponent(stream.id));
    }));
    info.appendChild(actions);
    head.appendChild(info);
    card.appendChild(head);
    card.appendChild(el("ul", "destinations"));
    return card;
  }

  function updateStream(card, stream) {
    var p = stream.publisher;
    setText(card, ".stream-key", stream.stream_key);
    setText(card, ".fact-state", stream.state === "live" ? "live"
      : "reconnecting (" + Math.ceil(stream.reconnect_seconds_left || 0) + " s left)");
    var since = stream.live_since ? Date.parse(stream.live_since) : serverNow();
    setText(card, ".fact-uptime", "up " + seconds((serverNow() - since) / 1000));
    setText(card, ".fact-bitrate", p ? "in " + kbps(p.bitrate_kbps) : "no publisher");
    setText(card, ".fact-video", p && p.width ? p.width + "×" + p.height +
      (p.fps ? " @ " + p.fps : "") + " " + (p.video_codec || "") : "");
    setText(card, ".fact-players", stream.players.length ? stream.players.length + " player(s)" : "");
    setText(card, ".stream-error", stream.destinations_error || "");
    refreshThumbnail(card, stream.id);
    var list = card.querySelector(".destinations");
    stream.destinations.forEach(function (destination) {
      var row = keyed(list, ".destination", destination.id, function () {
        return createDestination(stream.id, destination.id);
      });
      updateDestination(row, stream.id, destination);
    });
    sweep(list, ".destination");
  }

  async function refreshThumbnail(card, id) {
    var thumb = thumbs.get(id) || { at: 0, url: null, busy: false };
    thumbs.set(id, thumb);
    var img = card.querySelector(".thumb");
    if (thumb.url && img.src !== thumb.url) img.src = thumb.url;
    if (thumb.busy || Date.now() - thumb.at < THUMBNAIL_MS) return;
    thumb.busy = true;
    try {
      var response = await api("GET", "/api/streams/" + encodeURIComponent(id) + "/thumbnail.jpg");
      if (response.ok) {
        var url = URL.createObjectURL(await response.blob());
        if (thumb.url) URL.revokeObjectURL(thumb.url);
        thumb.url = url;
        img.src = url;
        thumb.at = Date.now();
      } else {
        // No keyframe yet, or the relay is busy decoding others: ask again soon.
        thumb.at = Date.now() - THUMBNAIL_MS + 1000;
      }
    } catch (error) {
      thumb.at = Date.now();
    } finally {
      thumb.busy = false;
    }
  }

  function createDestination(streamId, id) {
    var row = el("li", "destination");
    row.dataset.destinationId = id;
    var head = el("div", "destination-head");
    head.appendChild(el("span", "destination-name"));
    head.appendChild(el("span", "engine"));
    head.appendChild(el("span", "state"));
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 140 28");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "line"));
    svg.appendChild(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
    head.appendChild(svg);
    head.appendChild(el("span", "out-bitrate"));
    row.appendChild(head);
    var facts = el("div", "facts");
    ["lag", "drops", "restarts", "retry"].forEach(function (name) {
      facts.appendChild(el("span", "fact-" + name));
    });
    row.appendChild(facts);
    row.appendChild(el("div", "last-error"));
    row.appendChild(el("div", "extra"));
    var actions = el("div", "destination-actions");
    var base = function () {
      return "/api/streams/" + encodeURIComponent(streamId) + "/destinations/" +
        encodeURIComponent(id);
    };
    var restart = el("button", "restart", "Restart");
    restart.type = "button";
    restart.addEventListener("click", function () { act("POST", base() + "/restart"); });
    actions.appendChild(restart);
    var toggle = el("button", "toggle", "Disable");
    toggle.type = "button";
    toggle.hidden = true;
    toggle.addEventListener("click", function () {
      act("POST", base() + (toggle.dataset.enabled === "true" ? "/disable" : "/enable"));
    });
    actions.appendChild(toggle);
    actions.appendChild(confirmButton("Remove", "remove", function () {
      return act("DELETE", base());
    }));
    row.appendChild(actions);
    return row;
  }

  function stateWord(status) {
    return status.state;
  }

  /** What the engine wrote to the destination; older relays report only what it took from us. */
  function outputKbps(status) {
    return typeof status.output_bitrate_kbps === "number" ? status.output_bitrate_kbps
      : status.bitrate_kbps || 0;
  }

  function updateDestination(row, streamId, destination) {
    var status = destination.status;
    setText(row, ".destination-name", destination.id + " · " + (destination.platform || status.platform || ""));
    setText(row, ".engine", status.engine ? String(status.engine) : "");
    var word = stateWord(status);
    var kind = status.failure;
    var state = row.querySelector(".state");
    var label = word + (kind && word !== "connected" ? " · " + kind : "");
    if (state.textContent !== label) state.textContent = label;
    state.dataset.state = status.state;
    state.dataset.colour = COLOURS[word] || "idle";
    setText(row, ".out-bitrate", "out " + kbps(outputKbps(status)));
    drawSpark(row.querySelector(".spark"), history.get(streamId + "/" + destination.id) || []);
    setText(row, ".fact-lag", typeof status.queue_lag_ms === "number"
      ? "lag " + status.queue_lag_ms + " ms" : "");
    setText(row, ".fact-drops", "drops " + (status.dropped_packets || 0));
    setText(row, ".fact-restarts", "restarts " + (status.restarts || 0) +
      (status.attempt ? " · attempt " + status.attempt : "") +
      (typeof status.availability === "number"
        ? " · up " + Math.round(status.availability * 100) + "%" : ""));
    var retry = "";
    if (status.state === "exhausted") retry = "retries exhausted";
    else if (status.next_attempt_at) {
      var next = typeof status.next_attempt_at === "number" ? status.next_attempt_at
        : Date.parse(status.next_attempt_at);
      retry = "retry in " + Math.max(0, Math.ceil((next - serverNow()) / 1000)) + " s";
    }
    setText(row, ".fact-retry", retry);
    setText(row, ".last-error", status.last_error ? "last error: " + status.last_error : "");
    var extra = Object.keys(status).filter(function (name) {
      var value = status[name];
      return KNOWN.indexOf(name) < 0 && value !== null && typeof value !== "object";
    }).map(function (name) { return name + ": " + status[name]; }).join(" · ");
    setText(row, ".extra", extra);
    var toggle = row.querySelector(".toggle");
    var enabled = status.state !== "disabled";
    toggle.hidden = false;
    toggle.dataset.enabled = String(enabled);
    toggle.textContent = enabled ? "Disable" : "Enable";
  }

  function drawSpark(svg, samples) {
    var line = svg.querySelector("line");
    var poly = svg.querySelector("polyline");
    line.setAttribute("x1", "0");
    line.setAttribute("x2", "140");
    line.setAttribute("y1", "27");
    line.setAttribute("y2", "27");
    if (samples.length === 0) {
      poly.setAttribute("points", "");
      return;
    }
    var now = samples[samples.length - 1][0];
    // The last five minutes once there are five minutes to show; a young stream's line is not
    // squeezed into the right edge (at least one minute wide).
    var span = Math.min(HISTORY_MS, Math.max(60 * 1000, now - samples[0][0]));
    var max = Math.max.apply(null, samples.map(function (s) { return s[1]; }).concat([1]));
    poly.setAttribute("points", samples.map(function (s) {
      var x = 140 - ((now - s[0]) / span) * 140;
      var y = 26 - (s[1] / max) * 24;
      return x.toFixed(1) + "," + y.toFixed(1);
    }).join(" "));
    svg.setAttribute("aria-label", "output bitrate, last " + Math.round(span / 60000) +
      " min, peak " + kbps(max));
  }

  // Actions. A destructive one asks for a second click instead of a dialog.

  function confirmButton(label, cls, action) {
    var button = el("button", cls + " danger", label);
    button.type = "button";
    var timer = null;
    button.addEventListener("click", function () {
      if (button.dataset.armed !== "1") {
        button.dataset.armed = "1";
        button.textContent = "Confirm: " + label.toLowerCase();
        timer = setTimeout(function () {
          delete button.dataset.armed;
          button.textContent = label;
        }, 4000);
        return;
      }
      clearTimeout(timer);
      delete button.dataset.armed;
      button.textContent = label;
      action();
    });
    return button;
  }

  async function act(method, path) {
    $("action-error").textContent = "";
    try {
      var response = await api(method, path);
      if (response.status === 401) return start();
      if (!response.ok) {
        var body = await response.json().catch(function () { return {}; });
        $("action-error").textContent = method + " failed: " + (body.error || response.status);
      }
    } catch (error) {
      $("action-error").textContent = method + " failed: " + error.message;
    }
  }

  setInterval(function () { if (!$("dashboard").hidden) render(); }, 1000);
  start();
})();
`;
