// The events view: the history of the event index (/api/events), a page at a time, with a
// camera filter, a date range, acknowledge and dismiss (one event, or all of a camera),
// and an inline player of each event's clip. It keeps to its own section (#history) and
// talks to the rest of the page through DOM events only.
"use strict";

(() => {
  const PAGE = 20;          // events per page
  const REFRESH_S = 10;     // the newest page is fetched again this often (no player open)
  const view = {
    tz: null,               // the daemon's time zone (from the API)
    cameras: [],            // [{id, name}]
    filter: { camera: "", since: "", until: "", dismissed: false },
    pages: [null],          // the `before` of each page seen so far (null: the newest)
    page: 0,
    next: null,             // the `before` of the next, older page; null: none
    events: [],
    playing: null,          // id of the event whose player is open
    available: true,        // false: no event index (recording off)
  };
  let dateFormat = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // ------------------------------------------------------------------------- dates

  function zoneWorks(tz) {
    try { new Intl.DateTimeFormat("en", { timeZone: tz }); return true; } catch (e) { return false; }
  }

  function setZone(tz) {
    if (tz === view.tz && dateFormat) return;
    view.tz = tz;
    const options = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
                      minute: "2-digit", second: "2-digit", hourCycle: "h23",
                      timeZoneName: "short" };
    if (tz && zoneWorks(tz)) options.timeZone = tz;
    dateFormat = new Intl.DateTimeFormat("en-CA", options);
    const shown = options.timeZone || Intl.DateTimeFormat().resolvedOptions().timeZone;
    const note = document.querySelector("#history .zone");
    if (note) note.textContent = `times in ${shown}`;
  }

  // "2026-12-06 19:05:03 GMT+1": the date, the time and the zone, always
  function when(ts) {
    if (ts === null || ts === undefined) return "–";
    if (!dateFormat) setZone(null);
    const parts = Object.fromEntries(dateFormat.formatToParts(new Date(ts * 1000))
      .map((p) => [p.type, p.value]));
    return `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}:${parts.second} ${parts.timeZoneName || ""}`.trim();
  }

  // --------------------------------------------------------------------------- API

  async function call(method, path, body) {
    const response = await fetch(path, {
      method, cache: "no-store",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    let answer = null;
    try { answer = await response.json(); } catch (e) { answer = null; }
    if (!response.ok) {
      const error = new Error((answer && answer.error) || `${response.status}`);
      error.status = response.status;
      throw error;
    }
    return answer;
  }

  function query(before) {
    const q = new URLSearchParams({ limit: String(PAGE) });
    const f = view.filter;
    if (f.camera) q.set("camera", f.camera);
    if (f.since) q.set("since", f.since);
    if (f.until) q.set("until", f.until);
    if (f.dismissed) q.set("include_dismissed", "1");
    if (before !== null && before !== undefined) q.set("before", String(before));
    return q.toString();
  }

  async function load() {
    const root = document.getElementById("history");
    try {
      const answer = await call("GET", "/api/events?" + query(view.pages[view.page]));
      view.available = true;
      setZone(answer.tz);
      view.events = answer.events;
      view.next = answer.next_before;
      status("");
    } catch (error) {
      if (error.status === 404) {
        view.available = false;
        view.events = [];
      } else {
        status(`cannot load the events: ${error.message}`);
      }
    }
    root.hidden = !view.available;
    render();
  }

  async function act(path, what) {
    try {
      await call("POST", path, { by: "live page" });
    } catch (error) {
      status(`${what} failed: ${error.message}`);
      return;
    }
    document.dispatchEvent(new CustomEvent("forecaster:history-changed"));
    await load();
  }

  function status(text) {
    const note = document.querySelector("#history .status");
    if (note) note.textContent = text;
  }

  // ------------------------------------------------------------------------ render

  function build() {
    let root = document.getElementById("history");
    if (!root) {
      root = el("section", { id: "history", "aria-label": "event history" });
      const main = document.querySelector("main");
      if (main && main.parentNode) main.parentNode.insertBefore(root, main.nextSibling);
      else document.body.appendChild(root);
    }
    const camera = el("select", { name: "camera", class: "camera-filter" },
      el("option", { value: "" }, "all cameras"));
    const since = el("input", { type: "datetime-local", name: "since", step: "1" });
    const until = el("input", { type: "datetime-local", name: "until", step: "1" });
    const dismissed = el("input", { type: "checkbox", name: "dismissed" });
    const form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply(); } },
      el("label", {}, "camera ", camera),
      el("label", {}, "from ", since),
      el("label", {}, "to ", until),
      el("label", { class: "check" }, dismissed, " show dismissed"),
      el("button", { type: "submit", class: "apply" }, "Show"),
      el("button", { type: "button", class: "clear", onclick: clear }, "Clear"));
    const bulk = el("div", { class: "bulk" },
      el("button", { type: "button", class: "ack-camera", onclick: () => bulkAct("ack") },
        "Acknowledge all of this camera"),
      el("button", { type: "button", class: "dismiss-camera", onclick: () => bulkAct("dismiss") },
        "Dismiss all of this camera"));
    const pager = el("nav", { class: "pager", "aria-label": "pages" },
      el("button", { type: "button", class: "newer", onclick: () => go(-1) }, "← newer"),
      el("span", { class: "page-number" }),
      el("button", { type: "button", class: "older", onclick: () => go(1) }, "older →"));
    root.replaceChildren(
      el("div", { class: "history-head" },
        el("h2", {}, "Event history"), el("span", { class: "zone muted" }),
        el("span", { class: "status" })),
      form, bulk,
      el("p", { class: "empty muted", hidden: "" }, "no event"),
      el("ol", { class: "history-list" }),
      pager);
    root.hidden = true;
  }

  function fillCameras(cameras) {
    view.cameras = cameras.map((c) => ({ id: c.id, name: c.name || c.id }));
    const select = document.querySelector("#history select.camera-filter");
    if (!select) return;
    const wanted = [""].concat(view.cameras.map((c) => c.id)).join("\n");
    const have = Array.from(select.options).map((o) => o.value).join("\n");
    if (wanted === have) return;
    const value = select.value;
    select.replaceChildren(el("option", { value: "" }, "all cameras"),
      ...view.cameras.map((c) => el("option", { value: c.id }, c.name === c.id ? c.id : `${c.name} (${c.id})`)));
    select.value = value;
  }

  function nameOf(event) {
    return event.name || event.camera;
  }

  function duration(event) {
    if (event.end_ts === null || event.end_ts === undefined) return "ongoing";
    return `${(event.end_ts - event.start_ts).toFixed(1)} s`;
  }

  function clipText(event) {
    return { recording: "clip: recording…", ready: "", interrupted: "clip: interrupted (the daemon stopped)",
             none: "no clip recorded" }[event.clip_state] ?? "";
  }

  function row(event) {
    const li = el("li", { class: "history-event", "data-id": String(event.id), "data-camera": event.camera });
    if (event.acked_at) li.classList.add("acked");
    if (event.dismissed) li.classList.add("dismissed");
    const snapshot = event.snapshot_url
      ? el("img", { class: "thumb", src: event.snapshot_url, alt: `snapshot of ${nameOf(event)}`, loading: "lazy" })
      : el("div", { class: "thumb none" }, event.end_ts == null ? "recording…" : "no snapshot");
    const ackText = event.acked_at
      ? `${event.dismissed ? "dismissed" : "acknowledged"} by ${event.acked_by || "?"} at ${when(event.acked_at)}`
      : "not acknowledged";
    const actions = el("div", { class: "actions" });
    if (event.clip_url && event.clip_state === "ready" || event.clip_url && event.clip_state === "interrupted") {
      actions.append(
        el("button", { type: "button", class: "play", onclick: () => toggle(event.id) },
          view.playing === event.id ? "Close player" : "▶ Play"),
        el("a", { class: "download", href: event.clip_url, download: "" }, "download"));
    }
    if (!event.acked_at) {
      actions.append(el("button", { type: "button", class: "ack",
        onclick: () => act(`/api/events/${event.id}/ack`, "acknowledging") }, "Acknowledge"));
    }
    if (!event.dismissed) {
      actions.append(el("button", { type: "button", class: "dismiss",
        onclick: () => act(`/api/events/${event.id}/dismiss`, "dismissing") }, "Dismiss"));
    }
    li.append(snapshot,
      el("div", { class: "info" },
        el("div", { class: "title" }, el("strong", { class: "camera-name" }, nameOf(event)),
          " ", el("time", { class: "start", datetime: new Date(event.start_ts * 1000).toISOString() }, when(event.start_ts))),
        el("div", { class: "facts muted" },
          `${duration(event)} · peak ${event.peak === null ? "–" : Number(event.peak).toFixed(2)}`
          + (clipText(event) ? ` · ${clipText(event)}` : "")),
        el("div", { class: "ack-state" }, ackText)),
      actions);
    if (view.playing === event.id) li.append(player(event));
    return li;
  }

  // the inline player: the clip from its first frame (the pre-roll), the event's start and
  // its peak marked on a bar under it (from the event's times within the clip)
  function player(event) {
    const video = el("video", { class: "clip-player", controls: "", preload: "auto", playsinline: "",
                                src: event.clip_url });
    const marks = el("div", { class: "marks", title: "pre-roll · event · peak" });
    const span = (event.clip_end_ts ?? 0) - (event.clip_start_ts ?? 0);
    const at = (ts) => (span > 0 && ts !== null && ts !== undefined
      ? Math.min(1, Math.max(0, (ts - event.clip_start_ts) / span)) : null);
    const start = at(event.start_ts), end = at(event.end_ts ?? event.clip_end_ts), peak = at(event.peak_ts);
    if (start !== null) {
      marks.append(el("span", { class: "event-span", style: `left:${start * 100}%;width:${Math.max(0, (end ?? 1) - start) * 100}%` }));
    }
    if (peak !== null) marks.append(el("span", { class: "peak-mark", style: `left:${peak * 100}%` }));
    const cursor = el("span", { class: "cursor" });
    marks.append(cursor);
    video.addEventListener("timeupdate", () => {
      if (video.duration > 0) cursor.style.left = `${(video.currentTime / video.duration) * 100}%`;
    });
    marks.addEventListener("click", (e) => {
      const box = marks.getBoundingClientRect();
      if (video.duration > 0) video.currentTime = ((e.clientX - box.left) / box.width) * video.duration;
    });
    const seek = (fraction) => () => {
      if (fraction !== null && video.duration > 0) video.currentTime = fraction * video.duration;
    };
    const pre = start !== null && event.clip_start_ts !== null ? (event.start_ts - event.clip_start_ts) : null;
    return el("div", { class: "player" }, video, marks,
      el("div", { class: "player-legend muted" },
        el("button", { type: "button", class: "to-start", onclick: seek(0) }, "pre-roll"),
        el("button", { type: "button", class: "to-event", onclick: seek(start) }, "event start"),
        el("button", { type: "button", class: "to-peak", onclick: seek(peak) }, "◆ peak"),
        pre !== null ? ` pre-roll ${pre.toFixed(1)} s · peak at ${when(event.peak_ts)}` : ""));
  }

  function render() {
    const root = document.getElementById("history");
    if (!root) return;
    const list = root.querySelector(".history-list");
    // a player already open for the same event goes on playing: its node is kept
    const open = view.playing === null ? null
      : list.querySelector(`li[data-id="${view.playing}"] .player`);
    list.replaceChildren(...view.events.map(row));
    const fresh = open && list.querySelector(`li[data-id="${view.playing}"] .player`);
    if (fresh) fresh.replaceWith(open);
    root.querySelector(".empty").hidden = view.events.length > 0;
    root.querySelector(".newer").disabled = view.page === 0;
    root.querySelector(".older").disabled = view.next === null;
    root.querySelector(".page-number").textContent = `page ${view.page + 1}`;
    const bulk = root.querySelector(".bulk");
    bulk.hidden = !view.filter.camera;
  }

  // ----------------------------------------------------------------------- actions

  function toggle(id) {
    view.playing = view.playing === id ? null : id;
    render();
    if (view.playing !== null) {
      const video = document.querySelector(`#history li[data-id="${id}"] video`);
      if (video) video.currentTime = 0;
    }
  }

  function go(step) {
    if (step > 0 && view.next !== null) {
      view.pages = view.pages.slice(0, view.page + 1);
      view.pages.push(view.next);
      view.page += 1;
    } else if (step < 0 && view.page > 0) {
      view.page -= 1;
    } else {
      return;
    }
    view.playing = null;
    load();
  }

  function apply() {
    const root = document.getElementById("history");
    view.filter = {
      camera: root.querySelector("select.camera-filter").value,
      since: root.querySelector("input[name=since]").value,
      until: root.querySelector("input[name=until]").value,
      dismissed: root.querySelector("input[name=dismissed]").checked,
    };
    view.pages = [null];
    view.page = 0;
    view.playing = null;
    load();
  }

  function clear() {
    const root = document.getElementById("history");
    root.querySelector("select.camera-filter").value = "";
    root.querySelector("input[name=since]").value = "";
    root.querySelector("input[name=until]").value = "";
    root.querySelector("input[name=dismissed]").checked = false;
    apply();
  }

  function bulkAct(action) {
    const camera = view.filter.camera;
    if (!camera) return;
    act(`/api/events/${action}?camera=${encodeURIComponent(camera)}`,
        action === "ack" ? "acknowledging" : "dismissing");
  }

  // ------------------------------------------------------------------------- start

  function start() {
    build();
    const header = document.querySelector("header");
    if (header && !header.querySelector("a.history-link")) {
      header.append(el("a", { class: "history-link", href: "#history", onclick: (e) => {
        e.preventDefault();
        document.getElementById("history").scrollIntoView({ behavior: "smooth" });
      } }, "event history ↓"));
    }
    document.addEventListener("forecaster:cameras", (e) => {
      if (e.detail && Array.isArray(e.detail.cameras)) fillCameras(e.detail.cameras);
      if (e.detail && e.detail.tz) setZone(e.detail.tz);
    });
    document.addEventListener("forecaster:acknowledged", () => load());
    setInterval(() => {
      if (view.page === 0 && view.playing === null && !document.hidden) load();
    }, REFRESH_S * 1000);
    call("GET", "/api/cameras").then((answer) => {
      fillCameras(answer.cameras);
      setZone(answer.tz);
    }).catch(() => null);
    load();
  }

  window.forecasterHistory = { reload: load, state: view };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
