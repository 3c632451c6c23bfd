// The live page: one WebSocket (/feed) brings scores, health, events and images; the
// cameras' names and unacknowledged events come from /api/cameras.
"use strict";

const cams = Object.create(null);  // camera id -> {tile, imgs, urls, points, state, ...}
let order = [];           // camera ids in the daemon's order
let settings = null;      // the server's hello: thresholds, image rate
let socket = null;
let connected = false;
let clockOffset = 0;      // browser clock minus the daemon's (s)
let detailCam = null;     // the camera open in the detail view
let api = null;           // the last /api/cameras answer; null: none (yet, or no API)
let liveEvents = [];      // the feed's recent events
const localAcks = Object.create(null);  // without the API: camera -> the newest event id acknowledged here
const STALE_S = 3;        // a camera without a frame for this long is shown as stale

function $(sel, root) { return (root || document).querySelector(sel); }

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

// "2026-12-06 19:05:03 UTC": the date, the time and the time zone (the daemon's, once the
// API has said it), as the event history writes them
function clock(ts) {
  if (!ts) return "–";
  const options = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
                    minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "short" };
  let format;
  try {
    format = new Intl.DateTimeFormat("en-CA", api && api.tz ? { ...options, timeZone: api.tz } : options);
  } catch (error) {
    format = new Intl.DateTimeFormat("en-CA", options);  // a zone this browser does not know: its own
  }
  const parts = Object.fromEntries(format.formatToParts(new Date(ts * 1000)).map((p) => [p.type, p.value]));
  return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${parts.timeZoneName || ""}`.trim();
}

function ago(seconds) {
  if (seconds < 90) return `${Math.max(0, Math.round(seconds))} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

// one wording for a span of time, on the chart's axis and in its caption alike
function spanText(span) {
  const s = Math.round(span);
  if (s < 120) return `${s} s`;
  const m = Math.floor(s / 60), rest = s % 60;
  return rest ? `${m} min ${rest} s` : `${m} min`;
}

function recordingUrl(path) {
  return "/events/" + path.split("/").map(encodeURIComponent).join("/");
}

function cameraName(id) {
  const known = api && api.cameras.find((c) => c.id === id);
  return (known && known.name) || id;
}

function camera(id) {
  if (cams[id]) return cams[id];
  const tile = $("#tile-template").content.firstElementChild.cloneNode(true);
  tile.dataset.camera = id;
  $(".name", tile).textContent = id;
  tile.addEventListener("click", () => openDetail(id));
  tile.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(id); });
  $("button.ack", tile).addEventListener("click", (e) => { e.stopPropagation(); acknowledge([id]); });
  $("#grid").appendChild(tile);
  const cam = { id, tile, frame: $("img.frame", tile), heat: $("img.heat", tile),
                overlay: $(".overlay", tile), box: $(".box", tile),
                tileUrls: [null, null], panelUrls: [null, null, null], points: [],
                state: null, dirty: true, picture: null };
  cam.frame.addEventListener("load", () => placeOverlay(cam));
  cams[id] = cam;
  if (!order.includes(id)) order.push(id);
  return cam;
}

// ---------------------------------------------------------------------------- the feed

function sendView() {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ view: { tiles: true, detail: detailCam } }));
  }
}

function onHello(msg) {
  settings = msg;
  order = msg.cameras.slice();
  for (const id of msg.cameras) {
    const cam = camera(id);
    cam.points = [];
    cam.dirty = true;
  }
  if (location.hash && !detailCam) fromHash();
  sendView();
  arrange();
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
  if (typeof msg.now === "number") clockOffset = Date.now() / 1000 - msg.now;
  for (const s of msg.cameras) {
    const cam = camera(s.camera);
    cam.state = s;
    $(".score", cam.tile).textContent = s.score === null ? "" : fmt(s.score, 1);
    placeBox(cam);
  }
  refreshTiles();
}

function onEvents(msg) {
  liveEvents = msg.events;
  const list = $("#events");
  list.textContent = "";
  $("#no-events").hidden = msg.events.length > 0;
  for (const e of msg.events) {
    const li = document.createElement("li");
    li.className = "event" + (e.end_seq === null ? "" : " closed");
    li.dataset.camera = e.camera;
    const duration = e.end_ts ? `${(e.end_ts - e.start_ts).toFixed(1)} s` :
      connected ? "ongoing" : "open when the feed stopped";
    const title = document.createElement("div");
    title.innerHTML = "<strong></strong> ";
    title.firstChild.textContent = cameraName(e.camera);
    title.appendChild(document.createTextNode(
      `${clock(e.start_ts)} · ${duration} · peak ${fmt(e.peak, 2)}`));
    li.appendChild(title);
    if (e.snapshot && e.snapshot_ready) {
      const img = document.createElement("img");
      img.className = "snapshot";
      img.alt = "snapshot of " + cameraName(e.camera);
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
      } else if (connected && (e.clip_state === "recording" || !e.clip_state)) {
        p.className = "muted";
        p.textContent = "clip: recording…";
      }
      li.appendChild(p);
    }
    list.appendChild(li);
  }
  refreshTiles();
}

function showJpegs(imgs, urls, buffer, offset, sizes) {
  return sizes.map((size, i) => {
    if (!size) return Promise.resolve();
    const blob = new Blob([new Uint8Array(buffer, offset, size)], { type: "image/jpeg" });
    offset += size;
    const url = URL.createObjectURL(blob);
    const img = imgs[i];
    return new Promise((resolve) => {
      img.onload = img.onerror = () => {
        if (urls[i]) URL.revokeObjectURL(urls[i]);
        urls[i] = url;
        resolve();
      };
      img.src = url;
    });
  });
}

function onImages(buffer) {
  const view = new DataView(buffer);
  const length = view.getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const cam = camera(header.camera);
  const offset = 4 + length;
  let loads;
  if (header.kind === "tile") {
    loads = showJpegs([cam.frame, cam.heat], cam.tileUrls, buffer, offset, header.sizes);
    cam.picture = header.source ? "source" : "model";
    cam.tile.dataset.seq = header.seq;
    cam.tile.dataset.picture = cam.picture;
  } else {
    const imgs = ["actual", "forecast", "error"].map((c) => $(`#detail img.${c}`));
    loads = showJpegs(imgs, cam.panelUrls, buffer, offset, header.sizes);
    $("#detail").dataset.seq = header.seq;
  }
  Promise.all(loads).then(() => {
    // ready for the next images: the server sends them only after this
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ ack: header.ack || header.camera }));
    }
  });
}

// ------------------------------------------------------------------- picture overlays

// the heat map and the box cover the picture as shown (object-fit: contain)
function placeOverlay(cam) {
  const img = cam.frame, box = img.parentElement;
  const nw = img.naturalWidth, nh = img.naturalHeight;
  if (!nw || !nh) return;
  const bw = box.clientWidth, bh = box.clientHeight;
  const scale = Math.min(bw / nw, bh / nh);
  const w = nw * scale, h = nh * scale;
  Object.assign(cam.overlay.style, { left: `${(bw - w) / 2}px`, top: `${(bh - h) / 2}px`,
                                     width: `${w}px`, height: `${h}px` });
}

// the box of the anomalous region, while the camera's episode is open and its feed live
function placeBox(cam) {
  const s = cam.state;
  const b = s && s.anomaly && connected && !cam.tile.classList.contains("stale") && s.box;
  cam.box.hidden = !b;
  cam.tile.dataset.box = b ? b.join(",") : "";
  if (!b) return;
  const [fw, fh] = s.frame_size;
  Object.assign(cam.box.style, { left: `${100 * b[0] / fw}%`, top: `${100 * b[1] / fh}%`,
                                 width: `${100 * (b[2] - b[0]) / fw}%`,
                                 height: `${100 * (b[3] - b[1]) / fh}%` });
}

// ------------------------------------------------------------------ alarms and order

function openEpisode(id) {
  const cam = cams[id];
  if (cam && cam.state && cam.state.anomaly && connected) return true;
  return connected && liveEvents.some((e) => e.camera === id && e.end_seq === null);
}

function unacked(id) {
  if (api) {
    const c = api.cameras.find((x) => x.id === id);
    return c ? c.unacked || 0 : 0;
  }
  const seen = localAcks[id] ?? -1;
  return liveEvents.filter((e) => e.camera === id && e.id > seen).length;
}

function lastEventTs(id) {
  const c = api && api.cameras.find((x) => x.id === id);
  if (c && c.last_event_ts) return c.last_event_ts;
  const e = liveEvents.find((x) => x.camera === id);
  return e ? e.start_ts : 0;
}

function frameAge(cam) {
  const ts = cam.state && cam.state.last_frame_ts;
  return ts ? Date.now() / 1000 - clockOffset - ts : null;
}

function refreshTiles() {
  for (const id of order) {
    const cam = camera(id);
    const s = cam.state;
    const tile = cam.tile;
    $(".name", tile).textContent = cameraName(id);
    tile.title = cameraName(id) === id ? id : `${cameraName(id)} (${id})`;
    const alarm = openEpisode(id);
    const count = unacked(id);
    tile.classList.toggle("alarm", alarm);
    tile.classList.toggle("unacked", count > 0);
    $(".unacked-mark", tile).textContent = count ? `${count} new` : "";
    $("button.ack", tile).hidden = count === 0;
    // honest state: a camera is live only while its frames arrive and the feed is up
    const age = frameAge(cam);
    let source = s ? s.source : "unknown";
    let note = "";
    if (!connected) {
      source = "stale";
      note = age === null ? "no connection to the daemon" :
        `no connection to the daemon · last frame ${ago(age)} ago`;
    } else if (s && s.source === "ended") {
      note = age === null ? "stream ended" : `stream ended · last frame ${ago(age)} ago`;
    } else if (age === null) {
      source = s ? s.source : "unknown";
      note = "no frame yet";
    } else if (age > STALE_S) {
      source = "stale";
      note = `no frame for ${ago(age)}`;
    }
    const stale = note !== "";
    tile.classList.toggle("stale", stale);
    $(".stale-note", tile).textContent = note;
    const badge = $(".source", tile);
    badge.textContent = source === "stale" ? "no feed" : source;
    badge.className = "source badge " + source;
    tile.dataset.state = stale ? "stale" : source;
    placeBox(cam);
  }
  arrange();
  updateBar();
  updateDetail();
}

function arrange() {
  const rank = (id) => (openEpisode(id) ? 0 : unacked(id) > 0 ? 1 : 2);
  const sorted = order.slice().sort((a, b) => rank(a) - rank(b) ||
    (rank(a) < 2 ? lastEventTs(b) - lastEventTs(a) : 0) || order.indexOf(a) - order.indexOf(b));
  const grid = $("#grid");
  const current = Array.from(grid.children).map((el) => el.dataset.camera);
  if (sorted.join("\n") !== current.join("\n")) {
    for (const id of sorted) grid.appendChild(cams[id].tile);
  }
}

function updateBar() {
  const total = api ? api.unacked_total || 0 : order.reduce((n, id) => n + unacked(id), 0);
  const open = order.filter(openEpisode);
  const bar = $("#alarm-bar");
  bar.hidden = total === 0 && open.length === 0;
  bar.dataset.count = total;
  const parts = [];
  if (total) parts.push(`${total} unacknowledged alarm${total === 1 ? "" : "s"}`);
  if (open.length) parts.push(`ongoing: ${open.map(cameraName).join(", ")}`);
  $("#alarm-text").textContent = parts.join(" · ");
  $("#ack-all").hidden = total === 0;
}

async function acknowledge(ids) {
  if (!api) {  // no event index: acknowledged on this page only
    for (const id of ids) {
      for (const e of liveEvents) if (e.camera === id) localAcks[id] = Math.max(localAcks[id] ?? -1, e.id);
    }
    refreshTiles();
    return;
  }
  await Promise.all(ids.map((id) => fetch(`/api/events/ack?camera=${encodeURIComponent(id)}`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ by: "live page" }),
  }).catch(() => null)));
  await pollCameras();
  document.dispatchEvent(new CustomEvent("forecaster:acknowledged", { detail: { cameras: ids } }));
}

async function pollCameras() {
  try {
    const response = await fetch("/api/cameras", { cache: "no-store" });
    if (response.ok) {
      api = await response.json();
      document.dispatchEvent(new CustomEvent("forecaster:cameras", { detail: api }));
    } else if (response.status === 404) {
      api = null;  // a daemon without the event index: the page counts the feed's events
    }
  } catch (error) {
    // the daemon is away: keep what is known
  }
  refreshTiles();
}

// -------------------------------------------------------------------- the detail view

function openDetail(id) {
  if (location.hash !== `#camera=${encodeURIComponent(id)}`) {
    location.hash = `camera=${encodeURIComponent(id)}`;
  } else {
    showDetail(id);
  }
}

function closeDetail() {
  if (location.hash) history.pushState("", document.title, location.pathname + location.search);
  showDetail(null);
}

function showDetail(id) {
  detailCam = id && cams[id] ? id : null;
  const detail = $("#detail");
  detail.hidden = detailCam === null;
  detail.dataset.camera = detailCam || "";
  for (const img of detail.querySelectorAll("img.panel")) img.removeAttribute("src");
  delete detail.dataset.seq;
  sendView();
  if (detailCam) {
    cams[detailCam].dirty = true;
    updateDetail();
  }
  document.dispatchEvent(new CustomEvent("forecaster:detail", { detail: { camera: detailCam } }));
}

function fromHash() {
  const match = /^#camera=(.+)$/.exec(location.hash);
  showDetail(match ? decodeURIComponent(match[1]) : null);
}

function updateDetail() {
  if (!detailCam) return;
  const cam = cams[detailCam];
  const s = cam.state;
  const detail = $("#detail");
  $(".name", detail).textContent = cameraName(detailCam);
  detail.classList.toggle("alarm", openEpisode(detailCam));
  const badge = $(".source", detail);
  const tileBadge = $(".source", cam.tile);
  badge.textContent = tileBadge.textContent;
  badge.className = tileBadge.className;
  if (!s) return;
  $(".health", detail).textContent =
    `score ${fmt(s.score, 2)} · ${fmt(s.fps, 1)} fps · ${s.frames_dropped ?? "–"} dropped · ` +
    `${s.state_resets ?? "–"} state resets · ${s.frames_captured} frames captured` +
    (s.model_fit ? ` · model fit: ${s.model_fit}` : "") + (s.reason ? ` · ${s.reason}` : "") +
    (cam.tile.classList.contains("stale") ? ` · ${$(".stale-note", cam.tile).textContent}` : "");
}

function drawChart(cam) {
  const canvas = $("#detail canvas.chart");
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
  const fontPx = 11 * ratio;
  const x = (t) => pad + (width - 2 * pad) * (t - t0) / span;
  const y = (s) => height - pad - (height - 2 * pad) * (Math.min(Math.max(s, lo), hi) - lo) / (hi - lo);
  ctx.lineWidth = ratio;
  ctx.font = `${fontPx}px system-ui, sans-serif`;
  const yOn = y(settings.threshold_on), yOff = y(settings.threshold_off);
  // the start label above its line, the end label below its own: never on top of each other
  const lines = [[settings.threshold_on, "#ff5252", yOn, yOn - 3],
                 [settings.threshold_off, "#ffb74d", yOff, yOff + fontPx + 2]];
  for (const [value, color, ly, textY] of lines) {
    ctx.strokeStyle = color;
    ctx.setLineDash([6 * ratio, 4 * ratio]);
    ctx.beginPath();
    ctx.moveTo(pad, ly);
    ctx.lineTo(width - pad, ly);
    ctx.stroke();
    ctx.fillStyle = color;
    const label = `${value.toFixed(1)} ${value === settings.threshold_on ? "start" : "end"}`;
    ctx.fillText(label, width - pad - ctx.measureText(label).width - 2, textY);
  }
  ctx.setLineDash([]);
  ctx.fillStyle = "#9aa0a6";
  ctx.fillText(`−${spanText(span)}`, pad + 2, height - pad - 2);
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
  $("#detail .chart-caption").textContent =
    `anomaly score over the last ${spanText(span)} (${drawn} frames scored; ` +
    `the chart keeps ${spanText(windowS)})`;
}

function redraw() {
  if (!detailCam) return;
  const cam = cams[detailCam];
  if (cam.dirty) {
    cam.dirty = false;
    drawChart(cam);
  }
}

// ------------------------------------------------------------------------- start-up

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + "/feed");
  socket.binaryType = "arraybuffer";
  const badge = $("#connection");
  socket.onopen = () => {
    connected = true;
    badge.textContent = "live";
    badge.className = "badge on";
    sendView();
  };
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") { onImages(event.data); return; }
    const msg = JSON.parse(event.data);
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "scores") onScores(msg);
    else if (msg.type === "state") onState(msg);
    else if (msg.type === "events") onEvents(msg);
  };
  socket.onclose = () => {
    const was = connected;
    connected = false;
    badge.textContent = "disconnected: retrying…";
    badge.className = "badge off";
    if (was) onEvents({ events: liveEvents });
    refreshTiles();
    setTimeout(connect, 1000);
  };
}

const heatToggle = $("#heat-toggle");
heatToggle.checked = localStorage.getItem("forecaster.heat") !== "off";
document.body.classList.toggle("no-heat", !heatToggle.checked);
heatToggle.addEventListener("change", () => {
  document.body.classList.toggle("no-heat", !heatToggle.checked);
  localStorage.setItem("forecaster.heat", heatToggle.checked ? "on" : "off");
});
// every camera with events to acknowledge, or an episode open (its event may be newer
// than the last count)
$("#ack-all").addEventListener("click", () =>
  acknowledge(order.filter((id) => unacked(id) > 0 || openEpisode(id))));
$("#detail .close").addEventListener("click", closeDetail);
document.addEventListener("keydown", (e) => { if (e.key === "Escape" && detailCam) closeDetail(); });
window.addEventListener("hashchange", fromHash);
window.addEventListener("resize", () => {
  for (const cam of Object.values(cams)) { cam.dirty = true; placeOverlay(cam); }
});
// for the event view's script: names, acknowledgements, the camera in the detail view
window.forecasterPage = { cameraName, acknowledge, pollCameras, openDetail,
                          get api() { return api; }, get detail() { return detailCam; } };
setInterval(redraw, 250);
setInterval(refreshTiles, 1000);
setInterval(pollCameras, 2000);
connect();
pollCameras();
fromHash();
