// coinstream live: loads the pairs and their windows of one window spec (the resolution
// selector; `?window=` in the page's address too), then follows /events (Server-Sent Events,
// reconnected by the browser; events of other specs are left out). Charts by chart.js.
(function () {
  "use strict";
  const C = window.CoinCharts;
  const $ = (id) => document.getElementById(id);
  const st = {
    meta: null,
    spec: null,
    window: new URLSearchParams(location.search).get("window"), // the spec shown (its label)
    windows: new Map(), // pair -> Map(start_us -> view)
    latest: new Map(), // pair -> latest window start
    dirty: new Set(),
    frame: 0,
    db: null,
    waiting: null,
    connected: true,
    pipeline: null,
    loading: null,
  };
  window.__coinstream = st;

  function banner(kind, text) {
    const b = $("banner");
    b.className = "banner " + kind;
    b.textContent = text;
    if (!text) b.classList.add("hidden");
  }

  function showStatus() {
    if (!st.connected) {
      banner("error", "Connection to compare serve lost: reconnecting… (the figures shown may be out of date)");
    } else if (st.db && !st.db.up) {
      const since = st.db.last_ok_us ? " since " + C.timeLabel(st.db.last_ok_us, true, true) + " UTC" : "";
      banner("error", "The database does not answer" + since + ": " + (st.db.error || "unknown error") + ". Retrying; the figures shown may be out of date.");
    } else if (st.waiting) {
      banner("info", "Waiting: " + st.waiting);
    } else {
      banner("", "");
    }
  }

  async function getJson(url) {
    const r = await fetch(url, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.status + " " + r.statusText);
    return body;
  }

  function range() {
    return Number($("range").value);
  }

  function store(view) {
    let m = st.windows.get(view.pair);
    if (!m) {
      m = new Map();
      st.windows.set(view.pair, m);
      addPairOption(view.pair);
    }
    m.set(view.start_us, view);
    st.latest.set(view.pair, Math.max(st.latest.get(view.pair) || -Infinity, view.start_us));
    st.dirty.add(view.pair);
  }

  function addPairOption(pair) {
    const sel = $("pair");
    if ([...sel.options].some((o) => o.value === pair)) return;
    const o = document.createElement("option");
    o.value = o.textContent = pair;
    const after = [...sel.options].slice(1).find((x) => x.value > pair);
    sel.insertBefore(o, after || null);
  }

  // `&window=<label>` of the spec shown (none before the first answer: the server's first spec).
  function windowParam() {
    return st.window ? "&window=" + encodeURIComponent(st.window) : "";
  }

  async function loadPair(pair) {
    const latest = st.latest.get(pair);
    const since = latest === undefined ? "" : "&since=" + encodeURIComponent(C.iso(latest - range()));
    const body = await getJson("/api/windows?pair=" + encodeURIComponent(pair) + since + windowParam());
    st.windows.set(pair, new Map());
    for (const v of body.windows) store(v);
    st.dirty.add(pair);
  }

  // Everything again: after a start, a reconnection, a lagging stream, a range change.
  function reload() {
    if (st.loading) return st.loading;
    st.loading = (async () => {
      try {
        let meta;
        try {
          meta = await getJson("/api/meta?" + windowParam().slice(1));
        } catch (e) {
          // A spec the group does not have (an old address): its first one.
          if (!st.window) throw e;
          st.window = null;
          meta = await getJson("/api/meta");
        }
        st.meta = meta;
        st.spec = meta.spec;
        st.window = meta.window;
        st.db = meta.db;
        st.waiting = meta.waiting;
        renderSpecs(meta);
        renderSummary(meta.accuracy);
        $("spec").textContent = meta.spec
          ? "group " + meta.group + ": " + C.windowSpan(meta.spec)
          : "group " + meta.group;
        for (const p of meta.pairs) {
          st.latest.set(p.pair, p.latest_us);
          addPairOption(p.pair);
        }
        if (meta.spec) await Promise.all(meta.pairs.map((p) => loadPair(p.pair)));
        render();
        // When the first charts are on screen (the page-load benchmark reads it).
        if (!st.readyAt && meta.spec) requestAnimationFrame(() => { st.readyAt = performance.now(); });
        renderPipeline(await getJson("/api/pipeline"));
      } catch (e) {
        st.db = { up: false, error: String(e.message || e), last_ok_us: st.db && st.db.last_ok_us };
      } finally {
        st.loading = null;
        showStatus();
      }
    })();
    return st.loading;
  }

  // The resolution selector: one option per spec of the group, the one shown selected.
  function renderSpecs(meta) {
    const sel = $("window");
    const labels = (meta.specs || []).map((s) => s.label);
    if ([...sel.options].map((o) => o.value).join() !== labels.join()) {
      sel.replaceChildren(...(meta.specs || []).map((s) => {
        const o = document.createElement("option");
        o.value = s.label;
        o.textContent = s.label + ": " + C.windowSpan(s);
        return o;
      }));
    }
    if (st.window) sel.value = st.window;
    $("charts").dataset.window = st.window || "";
  }

  // Another spec: everything of the one shown is dropped, the other's loaded.
  async function switchWindow(label) {
    // A load of the other spec under way finishes first (its windows are dropped below).
    if (st.loading) await st.loading;
    st.window = label;
    st.windows = new Map();
    st.latest = new Map();
    st.dirty = new Set();
    $("charts").replaceChildren();
    const url = new URL(location.href);
    url.searchParams.set("window", label);
    history.replaceState(null, "", url);
    await reload();
  }

  function section(pair) {
    let s = document.querySelector(`section.chart[data-pair="${CSS.escape(pair)}"]`);
    if (!s) {
      s = document.createElement("section");
      s.className = "chart";
      s.dataset.pair = pair;
      const h = document.createElement("h3");
      const box = document.createElement("div");
      box.className = "box";
      s.append(h, box);
      const all = [...$("charts").children];
      $("charts").insertBefore(s, all.find((x) => x.dataset.pair > pair) || null);
    }
    return s;
  }

  function render() {
    st.frame = 0;
    if (!st.spec) return;
    const only = $("pair").value;
    // Read the layout once: reading it per chart would lay the page out again for each.
    const width = Math.max(480, Math.min(1200, $("charts").clientWidth || 880));
    for (const s of $("charts").children) s.classList.toggle("hidden", !!only && s.dataset.pair !== only);
    for (const pair of st.dirty) {
      if (only && pair !== only) continue;
      const m = st.windows.get(pair);
      if (!m) continue;
      const latest = st.latest.get(pair);
      const from = latest - range();
      const views = [...m.values()].filter((v) => v.start_us >= from).sort((a, b) => a.start_us - b.start_us);
      const s = section(pair);
      const bad = views.filter((v) => v.status === "differs" || v.status === "missing" || v.status === "extra").length;
      s.querySelector("h3").textContent = `${pair}: ${views.length} windows` + (bad ? `, ${bad} differ` : "");
      C.pairChart(s.querySelector(".box"), pair, views, st.spec, { width: width, height: only ? 380 : 280, window: st.window });
    }
    st.dirty = new Set(only ? [...st.dirty].filter((p) => p !== only) : []);
  }

  function schedule() {
    if (!st.frame) st.frame = requestAnimationFrame(render);
  }

  function renderSummary(a) {
    if (!a) return;
    const verdict = a.passed
      ? '<span class="pass">agree</span>'
      : a.matched === 0
        ? '<span class="fail">nothing compared yet</span>'
        : a.mismatches + a.missing + a.extra > 0
          ? '<span class="fail">differ</span>'
          : '<span class="muted">catching up</span>';
    const n = (label, v, cls) => `<span${cls && v ? ` class="${cls}"` : ""}>${label} <b>${C.fmt(v, 0)}</b></span>`;
    $("summary").innerHTML = verdict + " " + n("matched", a.matched) + n("differ", a.mismatches, "fail") +
      n("missing", a.missing, "fail") + n("extra", a.extra, "fail") + n("open", a.open) + n("pending", a.pending);
  }

  function ago(seconds) {
    if (seconds < 60) return Math.round(seconds) + " s ago";
    if (seconds < 3600) return Math.round(seconds / 60) + " min ago";
    return (seconds / 3600).toFixed(1) + " h ago";
  }

  // The dead letters not replayed: how many, and the newest few (service, reason, error, where
  // from, when).
  function renderDeadLetters(d) {
    if (!d) return;
    const count = $("dead-letters-count");
    count.textContent = C.fmt(d.not_replayed, 0);
    count.className = d.not_replayed > 0 ? "fail" : "";
    const table = $("dead-letters");
    table.classList.toggle("hidden", d.newest.length === 0);
    const body = table.querySelector("tbody");
    body.replaceChildren();
    for (const l of d.newest) {
      const tr = document.createElement("tr");
      tr.dataset.id = l.id;
      tr.dataset.service = l.service;
      tr.dataset.reason = l.reason;
      const cells = [l.service, l.reason, l.error, `${l.topic} [${l.partition}] @ ${l.offset}`,
        C.timeLabel(l.recorded_us, true, true)];
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = c;
        tr.appendChild(td);
      }
      tr.children[2].className = "error-text";
      body.appendChild(tr);
    }
  }

  function renderPipeline(p) {
    if (!p) return;
    renderDeadLetters(p.dead_letters);
    st.pipeline = { data: p, at: Date.now() };
    const body = $("pipeline").querySelector("tbody");
    body.replaceChildren();
    let latency = null;
    for (const s of p.services) {
      const tr = document.createElement("tr");
      tr.dataset.service = s.service;
      if (s.stale) tr.className = "stale";
      const cells = [s.service, s.instances, C.fmt(s.events_per_second, 0), C.fmt(s.events_in, 0),
        s.lag === null ? "n/a" : C.fmt(s.lag, 0), C.fmt(s.late_events, 0), C.fmt(s.dead_letters, 0),
        s.cpu_seconds.toFixed(1), s.peak_rss_mb.toFixed(1), ""];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        td.textContent = c;
        if (i > 0 && i < 9) td.className = "num";
        tr.appendChild(td);
      });
      const seen = tr.lastChild;
      seen.dataset.seenUs = s.last_seen_us;
      seen.dataset.nowUs = p.now_us;
      if (s.stale) {
        const b = document.createElement("span");
        b.className = "badge";
        b.textContent = "stale";
        seen.appendChild(b);
      }
      body.appendChild(tr);
      if (s.latency) latency = s.latency;
    }
    tickClock();
    if (latency) {
      $("latency-figures").textContent = `p50 ${latency.p50_ms.toFixed(1)} ms, p95 ${latency.p95_ms.toFixed(1)} ms, p99 ${latency.p99_ms.toFixed(1)} ms, max ${latency.max_ms.toFixed(1)} ms over ${C.fmt(latency.samples, 0)} updates (the aggregator's latest instance)`;
      C.histogram($("latency"), latency.histogram_ms);
    }
  }

  // "last seen" counts on between the server's pushes.
  function tickClock() {
    $("clock").textContent = new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC";
    if (!st.pipeline) return;
    const extra = (Date.now() - st.pipeline.at) / 1000;
    for (const td of document.querySelectorAll("#pipeline td[data-seen-us]")) {
      const s = (Number(td.dataset.nowUs) - Number(td.dataset.seenUs)) / 1e6 + extra;
      const badge = td.querySelector(".badge");
      td.textContent = ago(Math.max(0, s));
      if (badge) td.appendChild(badge);
    }
  }

  function connect() {
    const es = new EventSource("/events");
    es.addEventListener("open", () => {
      const wasDown = !st.connected;
      st.connected = true;
      showStatus();
      if (wasDown) reload();
    });
    es.addEventListener("error", () => {
      st.connected = false;
      showStatus();
    });
    es.addEventListener("windows", (e) => {
      const d = JSON.parse(e.data);
      if (d.window !== st.window) return;
      for (const v of d.views) store(v);
      schedule();
    });
    es.addEventListener("summary", (e) => {
      const d = JSON.parse(e.data);
      if (d.window === st.window) renderSummary(d.accuracy);
    });
    es.addEventListener("pipeline", (e) => renderPipeline(JSON.parse(e.data)));
    es.addEventListener("status", (e) => {
      const s = JSON.parse(e.data);
      const wasDown = st.db && !st.db.up;
      st.db = s.db;
      const wasWaiting = st.waiting;
      st.waiting = s.waiting;
      showStatus();
      if ((wasDown && s.db.up) || (wasWaiting && !s.waiting)) reload();
    });
    es.addEventListener("resync", () => reload());
  }

  $("window").addEventListener("change", () => switchWindow($("window").value));
  $("pair").addEventListener("change", () => {
    for (const p of st.windows.keys()) st.dirty.add(p);
    render();
  });
  $("range").addEventListener("change", async () => {
    await reload();
    for (const p of st.windows.keys()) st.dirty.add(p);
    render();
  });
  window.addEventListener("resize", () => {
    for (const p of st.windows.keys()) st.dirty.add(p);
    schedule();
  });
  setInterval(tickClock, 1000);
  reload().then(connect);
})();
