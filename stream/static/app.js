// rxstream browser client: camera -> WebRTC -> server filters -> processed video back.
// No build step and no external resources. Tests drive it through window.rxstream.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const PING_INTERVAL_MS = 1000;
  const MAX_LOG = 40;

  // Everything a test (or a curious user in the console) may want to read.
  const rx = {
    state: "idle",          // idle | connecting | live | error | stopped
    error: null,
    sessionId: null,
    filters: [],            // /api/filters
    chain: [],              // [{name, params}]
    lastStats: null,        // the last "stats" message from the server
    statsCount: 0,
    framesReceived: 0,      // decoded remote frames (requestVideoFrameCallback)
    lastFrameTime: null,
    rttMs: null,            // data-channel ping round trip
    clientMs: null,         // browser encode + jitter buffer + decode per frame, from getStats
    lastFrameMeta: null,
    acks: 0,
    errors: [],             // server "error" messages and client failures
    messages: [],
  };
  window.rxstream = rx;

  let pc = null;
  let dc = null;
  let localStream = null;
  let pingTimer = null;
  let statsTimer = null;

  // ---- UI state -----------------------------------------------------------
  function setState(state, detail) {
    rx.state = state;
    const el = $("status");
    el.dataset.state = state;
    const text = { idle: "Idle", connecting: "Connecting…", live: "Live", error: "Error", stopped: "Stopped" }[state];
    $("status-text").textContent = detail ? `${text} — ${detail}` : text;
    $("start").disabled = state === "connecting" || state === "live";
    $("stop").disabled = !(state === "connecting" || state === "live");
    $("resolution").disabled = state === "connecting" || state === "live";
  }

  function log(kind, text) {
    const entry = { kind, text, t: new Date().toISOString() };
    rx.messages.push(entry);
    if (rx.messages.length > 200) rx.messages.shift();
    const li = document.createElement("li");
    li.className = kind;
    li.textContent = `${entry.t.slice(11, 19)}  ${text}`;
    const ul = $("log");
    ul.prepend(li);
    while (ul.children.length > MAX_LOG) ul.lastChild.remove();
  }

  function fail(text) {
    rx.error = text;
    rx.errors.push(text);
    log("error", text);
  }

  // ---- filters and the control panel ---------------------------------------
  function filterInfo(name) {
    return rx.filters.find((f) => f.name === name);
  }

  function defaults(name) {
    const info = filterInfo(name);
    const out = {};
    if (info) for (const p of info.params) out[p.name] = p.default;
    return out;
  }

  async function loadFilters() {
    const r = await fetch("/api/filters");
    if (!r.ok) throw new Error(`GET /api/filters: HTTP ${r.status}`);
    rx.filters = await r.json();
    const wanted = new URLSearchParams(location.search).get("filters");
    const names = wanted ? wanted.split(/[+,]/).filter(Boolean)
      : [filterInfo("landmarks") ? "landmarks" : rx.filters[0]?.name].filter(Boolean);
    rx.chain = names.filter((n) => filterInfo(n)).map((n) => ({ name: n, params: defaults(n) }));
    renderChain();
  }

  function chainForServer() {
    return rx.chain.map((c) => ({ name: c.name, params: { ...c.params } }));
  }

  function renderChain() {
    const ol = $("chain");
    ol.replaceChildren();
    rx.chain.forEach((entry, i) => {
      const li = document.createElement("li");
      const sel = document.createElement("select");
      sel.className = "filter-select";
      sel.dataset.index = String(i);
      sel.setAttribute("aria-label", `filter ${i + 1}`);
      for (const f of rx.filters) {
        const o = new Option(f.name, f.name, false, f.name === entry.name);
        o.title = f.description || "";
        sel.add(o);
      }
      sel.addEventListener("change", () => {
        rx.chain[i] = { name: sel.value, params: defaults(sel.value) };
        chainChanged();
      });
      li.append(sel);
      li.append(iconButton("↑", "move up", i === 0, () => move(i, -1)));
      li.append(iconButton("↓", "move down", i === rx.chain.length - 1, () => move(i, 1)));
      li.append(iconButton("✕", "remove", rx.chain.length <= 1, () => { rx.chain.splice(i, 1); chainChanged(); }));
      const desc = document.createElement("div");
      desc.className = "muted small desc";
      desc.textContent = filterInfo(entry.name)?.description || "";
      li.append(desc);
      ol.append(li);
    });
    $("add-filter").disabled = rx.filters.length === 0;
    renderParams();
  }

  function iconButton(label, title, disabled, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "icon";
    b.textContent = label;
    b.title = title;
    b.setAttribute("aria-label", title);
    b.disabled = disabled;
    b.addEventListener("click", onClick);
    return b;
  }

  function move(i, d) {
    const j = i + d;
    [rx.chain[i], rx.chain[j]] = [rx.chain[j], rx.chain[i]];
    chainChanged();
  }

  // The chain the server runs (what we offered, then each acknowledged set_filters): a refused
  // change rolls the panel back to it, so the panel never shows what is not running.
  let appliedChain = [];
  const cloneChain = (c) => c.map((e) => ({ name: e.name, params: { ...e.params } }));

  function chainChanged() {
    renderChain();
    const sent = cloneChain(rx.chain);
    request({ type: "set_filters", filters: chainForServer() }, {
      ok: () => { appliedChain = sent; },
      refused: () => { rx.chain = cloneChain(appliedChain); renderChain(); },
    });
  }

  function renderParams() {
    const box = $("params");
    box.replaceChildren();
    const seen = new Set();
    for (const entry of rx.chain) {
      // The server configures every instance of a name at once, so show each name once.
      if (seen.has(entry.name)) continue;
      seen.add(entry.name);
      const info = filterInfo(entry.name);
      const group = document.createElement("fieldset");
      group.className = "param-group";
      group.dataset.filter = entry.name;
      const legend = document.createElement("legend");
      legend.textContent = entry.name;
      group.append(legend);
      if (!info || info.params.length === 0) {
        const p = document.createElement("p");
        p.className = "muted small";
        p.textContent = "No parameters.";
        group.append(p);
      } else {
        for (const spec of info.params) group.append(paramControl(entry, spec));
      }
      box.append(group);
    }
  }

  function paramControl(entry, spec) {
    const row = document.createElement("label");
    row.className = "param";
    row.title = spec.help || "";
    const name = document.createElement("span");
    name.className = "pname";
    name.textContent = spec.name.replaceAll("_", " ");
    row.append(name);
    const value = entry.params[spec.name] ?? spec.default;
    const id = `p-${entry.name}-${spec.name}`;
    let input;
    const commit = (v) => {
      const set = (chain, x) => { for (const e of chain) if (e.name === entry.name) e.params[spec.name] = x; };
      const before = appliedChain.find((e) => e.name === entry.name)?.params[spec.name] ?? value;
      set(rx.chain, v);
      request({ type: "configure", name: entry.name, params: { [spec.name]: v } }, {
        ok: () => set(appliedChain, v),
        refused: () => { set(rx.chain, before); renderParams(); },
      });
    };
    if (spec.choices && spec.choices.length) {
      input = document.createElement("select");
      for (const c of spec.choices) input.add(new Option(String(c), String(c), false, c === value));
      input.addEventListener("change", () => {
        const c = spec.choices.find((x) => String(x) === input.value);
        commit(c === undefined ? input.value : c);
      });
    } else if (spec.type === "bool") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = Boolean(value);
      input.addEventListener("change", () => commit(input.checked));
    } else if (spec.type === "float" || spec.type === "int") {
      const hasRange = spec.min !== null && spec.min !== undefined && spec.max !== null && spec.max !== undefined;
      input = document.createElement("input");
      input.type = hasRange ? "range" : "number";
      if (spec.min !== null && spec.min !== undefined) input.min = spec.min;
      if (spec.max !== null && spec.max !== undefined) input.max = spec.max;
      input.step = spec.type === "int" ? 1 : hasRange ? (spec.max - spec.min) / 200 : "any";
      input.value = value;
      const out = document.createElement("output");
      out.className = "pvalue";
      const fmt = (v) => (spec.type === "int" ? String(Math.round(v)) : Number(v).toFixed(2));
      out.textContent = fmt(value);
      input.addEventListener("input", () => { out.textContent = fmt(input.value); });
      input.addEventListener("change", () => {
        const v = spec.type === "int" ? Math.round(Number(input.value)) : Number(input.value);
        if (Number.isFinite(v)) commit(v);
      });
      row.append(input, out);
      input.id = id;
      input.dataset.param = spec.name;
      return row;
    } else {
      input = document.createElement("input");
      input.type = "text";
      input.value = value ?? "";
      input.addEventListener("change", () => commit(input.value));
    }
    input.id = id;
    input.dataset.param = spec.name;
    row.append(input);
    return row;
  }

  // ---- data channel ---------------------------------------------------------
  function send(msg) {
    if (dc && dc.readyState === "open") {
      dc.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  // The server answers every non-ping message with one ack or error, in order, so a FIFO pairs
  // replies with requests. Offline, changes are only local: the next Start sends the whole chain.
  const pending = [];
  function request(msg, { ok = () => {}, refused = () => {} } = {}) {
    if (send(msg)) pending.push({ ok, refused });
    else ok();
  }

  function onMessage(ev) {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      fail(`unreadable message from server: ${String(ev.data).slice(0, 80)}`);
      return;
    }
    switch (msg.type) {
      case "stats":
        rx.lastStats = msg;
        rx.statsCount += 1;
        renderStats();
        break;
      case "pong":
        if (typeof msg.t === "number") rx.rttMs = performance.now() - msg.t;
        break;
      case "ack":
        rx.acks += 1;
        pending.shift()?.ok();
        if (msg.chain) log("info", `chain: ${[].concat(msg.chain).map((c) => c.name ?? c).join(" → ")}`);
        break;
      case "error":
        pending.shift()?.refused();
        fail(`server: ${msg.error ?? msg.message ?? JSON.stringify(msg)}`);
        break;
      default:
        break;
    }
  }

  // ---- stats overlay -------------------------------------------------------
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(1) : "–");
  const ms = (v) => (typeof v === "number" && Number.isFinite(v) ? `${v.toFixed(1)} ms` : "–");
  const pair = (o) => (o ? `${num(o.p50)} / ${num(o.p95)}` : "–"); // p50 / p95 in ms

  // aiortc's receiver releases a frame only when the next frame's first packet arrives, so the
  // server holds each frame one frame interval before it even starts processing.
  const SERVER_RX_HOLD_FRAMES = 1;

  // Server-side e2e (frame arrival -> handed to its encoder) plus what the server cannot see:
  // the network both ways (~ ping RTT), the server's receive hold, and the browser's encode,
  // jitter buffer and decode (getStats). Camera exposure and display are not included.
  function e2eEstimate(s) {
    const server = s?.e2e_ms?.p50 ?? s?.processing_ms?.p50;
    if (typeof server !== "number") return null;
    const hold = s.fps_in > 0 ? (SERVER_RX_HOLD_FRAMES * 1000) / s.fps_in : 0;
    return server + hold + (rx.rttMs ?? 0) + (rx.clientMs ?? 0);
  }

  function renderStats() {
    const s = rx.lastStats;
    $("stats").hidden = !$("show-stats").checked || !s;
    if (!s) return;
    const f = (v) => (typeof v === "number" ? v.toFixed(1) : "–");
    $("st-fps").textContent = `${f(s.fps_in)} / ${f(s.fps_out)}`;
    $("st-proc").textContent = pair(s.processing_ms);
    const est = e2eEstimate(s);
    $("st-e2e").textContent = est === null ? "–" : est.toFixed(0);
    $("st-e2e").title = `server p50/p95 ${pair(s.e2e_ms)} ms + receive hold ~1 frame + ping RTT ${ms(rx.rttMs)}`
      + ` + browser encode/jitter buffer/decode ${ms(rx.clientMs)}`;
    $("st-rtt").textContent = ms(rx.rttMs);
    $("st-drop").textContent = `${s.dropped ?? 0}`;
    $("st-frames").textContent = `${rx.framesReceived}`;
    const row = (cls, label, value) => {
      const div = document.createElement("div");
      div.className = `r ${cls}`;
      const k = document.createElement("span");
      const v = document.createElement("b");
      k.textContent = label;
      v.textContent = value;
      div.append(k, v);
      return div;
    };
    $("st-stages").replaceChildren(
      ...Object.entries(s.stages_ms || {}).map(([name, v]) => row("stage", name, pair(v))));
    const a = (v) => (typeof v === "number" ? `${v >= 0 ? "+" : ""}${v.toFixed(0)}°` : "–");
    const list = s.faces || [];
    $("st-faces").replaceChildren(
      row("head", "faces", list.length ? String(list.length) : "none"),
      ...list.map((f) => row("face", `#${f.id}`, `y ${a(f.yaw)} p ${a(f.pitch)} r ${a(f.roll)}`)));
    // Which backend serves each network (or why none does: loading, no weights, failed).
    const models = Object.entries(s.models || {});
    $("st-models").replaceChildren(
      ...(models.length ? [row("head", "models", "")] : []),
      ...models.map(([name, m]) => {
        const r = row("stage", name, m.state === "ready"
          ? `${m.backend} ${m.device} ${m.precision}${(m.batches || []).length > 1 ? ` b${m.batches.join("/")}` : ""}`
          : m.state);
        if (m.error || m.failed) r.title = m.error || m.failed.join("\n");
        return r;
      }));
  }

  // Receiver-side jitter buffer and decode time per frame, from the standard WebRTC stats.
  let prevInbound = null;
  let prevOutbound = null;
  let encodeS = 0;
  async function pollRtcStats() {
    if (!pc) return;
    try {
      const report = await pc.getStats();
      report.forEach((r) => {
        if (r.kind !== "video") return;
        if (r.type === "outbound-rtp") {
          if (prevOutbound && r.framesEncoded > prevOutbound.framesEncoded) {
            const n = r.framesEncoded - prevOutbound.framesEncoded;
            encodeS = (r.totalEncodeTime - prevOutbound.totalEncodeTime) / n;
          }
          prevOutbound = r;
        } else if (r.type === "inbound-rtp") {
          if (prevInbound && r.jitterBufferEmittedCount > prevInbound.jitterBufferEmittedCount) {
            const n = r.jitterBufferEmittedCount - prevInbound.jitterBufferEmittedCount;
            const jb = (r.jitterBufferDelay - prevInbound.jitterBufferDelay) / n;
            const nd = r.framesDecoded - prevInbound.framesDecoded;
            const dec = nd > 0 ? (r.totalDecodeTime - prevInbound.totalDecodeTime) / nd : 0;
            rx.clientMs = (encodeS + jb + dec) * 1000;
          }
          prevInbound = r;
        }
      });
    } catch {
      // getStats can fail while the connection closes; the next tick retries.
    }
  }

  // ---- frames --------------------------------------------------------------
  function countFrames(video) {
    if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) {
      fail("this browser lacks requestVideoFrameCallback: frame counter disabled");
      return;
    }
    const tick = (now, meta) => {
      rx.framesReceived += 1;
      rx.lastFrameTime = now;
      rx.lastFrameMeta = { width: meta.width, height: meta.height, presentedFrames: meta.presentedFrames };
      video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
  }

  // The current remote frame at its native size: {width, height, dataUrl} (lossless PNG) or null.
  rx.grabFrame = (type = "image/png") => {
    const v = $("remote");
    if (!v.videoWidth) return null;
    const c = document.createElement("canvas");
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    return { width: c.width, height: c.height, dataUrl: c.toDataURL(type) };
  };

  rx.grabImageData = () => {
    const v = $("remote");
    if (!v.videoWidth) return null;
    const c = document.createElement("canvas");
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    const ctx = c.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(v, 0, 0);
    return ctx.getImageData(0, 0, c.width, c.height);
  };

  // ---- connect / disconnect ------------------------------------------------
  function waitIceGathering(conn) {
    if (conn.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (conn.iceGatheringState === "complete") {
          conn.removeEventListener("icegatheringstatechange", check);
          resolve();
        }
      };
      conn.addEventListener("icegatheringstatechange", check);
    });
  }

  async function start() {
    if (rx.state === "connecting" || rx.state === "live") return;
    rx.error = null;
    rx.framesReceived = 0;
    rx.lastStats = null;
    rx.statsCount = 0;
    prevInbound = null;
    prevOutbound = null;
    encodeS = 0;
    setState("connecting", "camera");
    try {
      const [w, h] = $("resolution").value.split("x").map(Number);
      localStream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: w }, height: { ideal: h }, frameRate: { ideal: 30 } },
        audio: false,
      });
      const local = $("local");
      local.srcObject = localStream;
      $("local-ph").hidden = true;
      local.onloadedmetadata = () => { $("local-res").textContent = `${local.videoWidth}×${local.videoHeight}`; };

      setState("connecting", "negotiating");
      pc = new RTCPeerConnection({ iceServers: [] });
      const track = localStream.getVideoTracks()[0];
      pc.addTransceiver(track, { direction: "sendrecv", streams: [localStream] });
      dc = pc.createDataChannel("control");
      dc.onopen = () => {
        log("info", "control channel open");
        ping();
        pingTimer = setInterval(ping, PING_INTERVAL_MS);
      };
      dc.onmessage = onMessage;
      dc.onclose = () => clearInterval(pingTimer);

      const remote = $("remote");
      pc.ontrack = (ev) => {
        remote.srcObject = ev.streams[0] || new MediaStream([ev.track]);
        countFrames(remote);
      };
      remote.onresize = () => { $("remote-res").textContent = `${remote.videoWidth}×${remote.videoHeight}`; };
      remote.onloadeddata = () => {
        $("remote-ph").hidden = true;
        if (rx.state === "connecting") setState("live");
      };
      pc.onconnectionstatechange = () => {
        const s = pc?.connectionState;
        if (s === "failed") {
          fail("connection failed");
          teardown("error", "connection failed");
        } else if (s === "disconnected") {
          log("warn", "connection interrupted; waiting for it to recover");
        }
      };

      const offered = cloneChain(rx.chain);
      pending.length = 0;
      await pc.setLocalDescription(await pc.createOffer());
      await waitIceGathering(pc); // no trickle: the offer carries every candidate
      const r = await fetch("/offer", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type, filters: offered }),
      });
      let body = null;
      try {
        body = await r.json();
      } catch {
        body = null;
      }
      if (!r.ok) throw new Error(body?.error || `POST /offer: HTTP ${r.status}`);
      if (!body || !body.sdp) throw new Error("POST /offer: no SDP answer in the reply");
      rx.sessionId = body.session_id ?? null;
      appliedChain = offered;
      await pc.setRemoteDescription({ sdp: body.sdp, type: body.type || "answer" });
      setState("connecting", "waiting for video");
      log("info", `session ${rx.sessionId ?? "?"} started`);
      statsTimer = setInterval(() => {
        pollRtcStats();
        renderStats();
      }, 1000);
    } catch (e) {
      fail(e?.message || String(e));
      teardown("error", e?.message || String(e));
    }
  }

  function teardown(state, detail) {
    clearInterval(pingTimer);
    clearInterval(statsTimer);
    const id = rx.sessionId;
    rx.sessionId = null;
    if (id) fetch(`/session/${encodeURIComponent(id)}`, { method: "DELETE" }).catch(() => {});
    if (dc) dc.close();
    if (pc) pc.close();
    dc = null;
    pc = null;
    if (localStream) for (const t of localStream.getTracks()) t.stop();
    localStream = null;
    $("local").srcObject = null;
    $("remote").srcObject = null;
    $("local-ph").hidden = false;
    $("remote-ph").hidden = false;
    $("remote-ph").textContent = state === "error" ? "Not connected (see messages)" : "Press Start to connect";
    $("stats").hidden = true;
    $("local-res").textContent = "";
    $("remote-res").textContent = "";
    setState(state, detail);
  }

  function ping() {
    send({ type: "ping", t: performance.now() });
  }

  rx.start = start;
  rx.stop = () => teardown("stopped");
  rx.setFilters = (chain) => {
    rx.chain = [].concat(chain).map((c) => (typeof c === "string" ? { name: c, params: defaults(c) } : c));
    chainChanged();
  };
  rx.configure = (name, params) => request({ type: "configure", name, params });

  // ---- wiring ----------------------------------------------------------------
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", () => teardown("stopped"));
  $("show-stats").addEventListener("change", renderStats);
  $("add-filter").addEventListener("click", () => {
    const name = filterInfo("passthrough") ? "passthrough" : rx.filters[0]?.name;
    if (!name) return;
    rx.chain.push({ name, params: defaults(name) });
    chainChanged();
  });
  window.addEventListener("pagehide", () => {
    // keepalive lets the DELETE outlive the page, so the server frees the session at once.
    if (rx.sessionId) fetch(`/session/${encodeURIComponent(rx.sessionId)}`, { method: "DELETE", keepalive: true });
  });

  setState("idle");
  rx.ready = loadFilters().then(
    () => { rx.filtersLoaded = true; },
    (e) => {
      fail(`could not load filters: ${e.message}`);
      $("params").replaceChildren();
      setState("error", "server unreachable");
    },
  );
})();
