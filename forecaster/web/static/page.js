// The live page: one WebSocket (/feed) brings scores, health, events and images.
"use strict";

const cams = {};          // camera id -> {el, imgs, urls, points, chart}
let settings = null;      // the server's hello: thresholds, image rate
let socket = null;

function $(sel, root) { return (root || document).querySelector(sel); }

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function clock(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "–";
}

function recordingUrl(path) {
  return "/events/" + path.split("/").map(encodeURIComponent).join("/");
}

function camera(name) {
  if (cams[name]) return cams[name];
  const el = $("#camera-template").content.firstElementChild.cloneNode(true);
  el.dataset.camera = name;
  $(".name", el).textContent = name;
  $("#cameras").appendChild(el);
  const cam = { el, imgs: [$(".actual", el), $(".forecast", el), $(".error", el)],
                urls: [null, null, null], points: [], chart: $(".chart", el), dirty: true };
  cams[name] = cam;
  return cam;
}

function onHello(msg) {
  settings = msg;
  for (const name of msg.cameras) {
    const cam = camera(name);
    cam.points = [];
    cam.dirty = true;
  }
}

function onScores(msg) {
  const cam = camera(msg.camera);
  for (const p of msg.points) cam.points.push(p);
  const newest = cam.points.length ? cam.points[cam.points.length - 1][0] : 0;
  const window = (settings && settings.history_s) || 300;
  let drop = 0;
  while (drop < cam.points.length && cam.points[drop][0] < newest - window) drop++;
  if (drop) cam.points.splice(0, drop);
  cam.dirty = true;
}

function onState(msg) {
  for (const s of msg.cameras) {
    const cam = camera(s.camera);
    const source = $(".source", cam.el);
    source.textContent = s.source;
    source.className = "source badge " + s.source;
    cam.el.classList.toggle("alarm", !!s.anomaly);
    $(".health", cam.el).textContent =
      `score ${fmt(s.score, 2)} · ${fmt(s.fps, 1)} fps · ${s.frames_dropped ?? "–"} dropped · ` +
      `${s.state_resets ?? "–"} state resets · ${s.frames_captured} frames captured` +
      (s.model_fit ? ` · model fit: ${s.model_fit}` : "") + (s.reason ? ` · ${s.reason}` : "");
  }
}

function onEvents(msg) {
  const list = $("#events");
  list.textContent = "";
  $("#no-events").hidden = msg.events.length > 0;
  for (const e of msg.events) {
    const li = document.createElement("li");
    li.className = "event" + (e.end_seq === null ? "" : " closed");
    li.dataset.camera = e.camera;
    const duration = e.end_ts ? `${(e.end_ts - e.start_ts).toFixed(1)} s` : "ongoing";
    const title = document.createElement("div");
    title.innerHTML = "<strong></strong> ";
    title.firstChild.textContent = e.camera;
    title.appendChild(document.createTextNode(
      `${clock(e.start_ts)} · ${duration} · peak ${fmt(e.peak, 2)} · frames ${e.start_seq}` +
      (e.end_seq === null ? "…" : `–${e.end_seq}`)));
    li.appendChild(title);
    if (e.snapshot && e.snapshot_ready) {
      const img = document.createElement("img");
      img.className = "snapshot";
      img.alt = "snapshot of " + e.camera;
      img.src = recordingUrl(e.snapshot);
      li.appendChild(img);
    }
    if (e.clip) {
      const p = document.createElement("div");
      if (e.clip_ready) {
        const a = document.createElement("a");
        a.className = "clip";
        a.href = recordingUrl(e.clip);
        a.textContent = "clip";
        a.setAttribute("download", "");
        p.appendChild(a);
      } else {
        p.className = "muted";
        p.textContent = "clip: recording…";
      }
      li.appendChild(p);
    }
    list.appendChild(li);
  }
}

function onImages(buffer) {
  const view = new DataView(buffer);
  const length = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const cam = camera(header.camera);
  let offset = 4 + length;
  const loads = header.sizes.map((size, i) => {
    const blob = new Blob([new Uint8Array(buffer, offset, size)], { type: "image/jpeg" });
    offset += size;
    const url = URL.createObjectURL(blob);
    const img = cam.imgs[i];
    return new Promise((resolve) => {
      img.onload = img.onerror = () => {
        if (cam.urls[i]) URL.revokeObjectURL(cam.urls[i]);
        cam.urls[i] = url;
        resolve();
      };
      img.src = url;
    });
  });
  Promise.all(loads).then(() => {
    cam.el.dataset.seq = header.seq;
    // ready for the next images: the server sends them only after this
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ ack: header.camera }));
    }
  });
}

function drawChart(cam) {
  const canvas = cam.chart;
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, width, height);
  if (!settings) return;
  const points = cam.points;
  const windowS = settings.history_s || 300;
  const newest = points.length ? points[points.length - 1][0] : Date.now() / 1000;
  // the chart spans what there is, from 30 s up to the whole window
  const first = points.length ? points[0][0] : newest;
  const span = Math.min(windowS, Math.max(30, newest - first));
  const t0 = newest - span;
  let lo = Math.min(-1, settings.threshold_off - 1);
  let hi = settings.threshold_on + 1;
  for (const [, s] of points) {
    if (s === null) continue;
    if (s < lo) lo = s;
    if (s > hi) hi = s;
  }
  hi = Math.min(hi, settings.threshold_on * 4 + 4);
  const pad = 4 * ratio;
  const x = (t) => pad + (width - 2 * pad) * (t - t0) / span;
  const y = (s) => height - pad - (height - 2 * pad) * (Math.min(Math.max(s, lo), hi) - lo) / (hi - lo);
  ctx.lineWidth = ratio;
  ctx.font = `${11 * ratio}px system-ui, sans-serif`;
  for (const [value, color] of [[settings.threshold_on, "#ff5252"], [settings.threshold_off, "#ffb74d"]]) {
    ctx.strokeStyle = color;
    ctx.setLineDash([6 * ratio, 4 * ratio]);
    ctx.beginPath();
    ctx.moveTo(pad, y(value));
    ctx.lineTo(width - pad, y(value));
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.fillText(value.toFixed(1), pad + 2, y(value) - 3);
  }
  ctx.setLineDash([]);
  ctx.fillStyle = "#9aa0a6";
  ctx.fillText(`−${Math.round(span)} s`, pad + 2, height - pad - 2);
  ctx.fillText("now", width - pad - ctx.measureText("now").width - 2, height - pad - 2);
  ctx.strokeStyle = "#4fc3f7";
  ctx.lineWidth = 1.5 * ratio;
  ctx.beginPath();
  let drawn = 0;
  let pen = false;
  for (const [t, s] of points) {
    if (s === null) { pen = false; continue; }
    if (pen) ctx.lineTo(x(t), y(s)); else ctx.moveTo(x(t), y(s));
    pen = true;
    drawn++;
  }
  ctx.stroke();
  canvas.dataset.drawn = drawn;
  $(".chart-caption", cam.el).textContent =
    `anomaly score over the last ${span < 120 ? Math.round(span) + " s" : Math.round(span / 60) + " minutes"} ` +
    `(${drawn} frames scored; the chart keeps ${Math.round(windowS / 60)} minutes)`;
}

function redraw() {
  for (const cam of Object.values(cams)) {
    if (cam.dirty) {
      cam.dirty = false;
      drawChart(cam);
    }
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + "/feed");
  socket.binaryType = "arraybuffer";
  const badge = $("#connection");
  socket.onopen = () => { badge.textContent = "live"; badge.className = "badge on"; };
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") { onImages(event.data); return; }
    const msg = JSON.parse(event.data);
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "scores") onScores(msg);
    else if (msg.type === "state") onState(msg);
    else if (msg.type === "events") onEvents(msg);
  };
  socket.onclose = () => {
    badge.textContent = "disconnected: retrying…";
    badge.className = "badge off";
    setTimeout(connect, 1000);
  };
}

setInterval(redraw, 250);
window.addEventListener("resize", () => { for (const cam of Object.values(cams)) cam.dirty = true; });
connect();
