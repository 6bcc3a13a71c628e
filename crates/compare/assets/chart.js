// coinstream charts: SVG drawn from window views (the shape of /api/windows): per pair a candle
// per window, the batch average and update counts. Used by the live page and inlined in the
// static HTML report. No dependencies.
(function (global) {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const MINUTE = 60e6, HOUR = 60 * MINUTE, DAY = 24 * HOUR;
  const TIME_STEPS = [1e6, 5e6, 10e6, 15e6, 30e6, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE,
    15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY];
  const BAD = { differs: true, missing: true, extra: true };

  function el(name, attrs, parent, text) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }

  function iso(us) {
    return new Date(us / 1000).toISOString();
  }

  // "12:05" or "2024-08-05 12:05" (UTC); seconds when the step needs them.
  function timeLabel(us, withDate, withSeconds) {
    const s = iso(us);
    const hm = withSeconds ? s.slice(11, 19) : s.slice(11, 16);
    return withDate ? s.slice(0, 10) + " " + hm : hm;
  }

  function niceStep(span, target) {
    const raw = span / Math.max(1, target);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
  }

  // One formatter per number of decimals: toLocaleString would build one per call (slow).
  const formats = new Map();
  function fmt(v, decimals) {
    let f = formats.get(decimals);
    if (!f) {
      f = new Intl.NumberFormat("en-US", { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
      formats.set(decimals, f);
    }
    return f.format(v);
  }

  function windowSpan(spec) {
    const size = spec.size_us, slide = spec.slide_us;
    const unit = (us) => us % HOUR === 0 ? us / HOUR + " h" : us % MINUTE === 0 ? us / MINUTE + " min" : us / 1e6 + " s";
    return size === slide ? unit(size) + " tumbling windows" : unit(size) + " windows every " + unit(slide);
  }

  // The side drawn for a window: the stream's when it has one, else the batch's.
  function shown(w) {
    return w.stream || w.batch;
  }

  // Runs of windows without gaps (a gap breaks the batch line).
  function runs(windows, slide) {
    const out = [];
    let run = [];
    for (const w of windows) {
      if (run.length && w.start_us - run[run.length - 1].start_us > slide) {
        out.push(run);
        run = [];
      }
      run.push(w);
    }
    if (run.length) out.push(run);
    return out;
  }

  // One window's candle (the stream's: open = first rate, high = max, low = min, close = last
  // rate) centred at `cx`, `bw` wide; a window only the batch side has gets its high-low wick.
  function candle(g, w, cx, bw, py) {
    const a = w.stream;
    if (!a || w.first_rate === undefined || w.last_rate === undefined) {
      const b = w.batch;
      el("line", { class: "wick batch-only", x1: cx, x2: cx, y1: py(b.max), y2: py(b.min) }, g);
      return;
    }
    const open = w.first_rate, close = w.last_rate;
    g.dataset.open = open;
    g.dataset.close = close;
    g.dataset.high = a.max;
    g.dataset.low = a.min;
    el("line", { class: "wick", x1: cx, x2: cx, y1: py(a.max), y2: py(a.min) }, g);
    const top = py(Math.max(open, close)), bottom = py(Math.min(open, close));
    const width = Math.max(1, Math.min(bw * 0.7, bw - 1));
    el("rect", { class: "candle " + (close >= open ? "up" : "down"), x: cx - width / 2, y: top, width: width, height: Math.max(1, bottom - top) }, g);
  }

  // One pair: a candle per window (the stream's), the batch average over them, update counts
  // below; differing windows marked. `windows` sorted by start. A window's candle and count bar
  // stand on its last slide (a tumbling window's whole length).
  function pairChart(container, pair, windows, spec, opts) {
    opts = opts || {};
    const W = opts.width || Math.max(480, Math.min(1200, container.clientWidth || 880));
    const H = opts.height || 300;
    const m = { left: 78, right: 18, top: 30, bottom: 34 };
    const countH = 52, gap = 16;
    const rateTop = m.top, rateBottom = H - m.bottom - countH - gap;
    const countTop = rateBottom + gap, countBottom = H - m.bottom;
    const [base, quote] = pair.split("/");
    const svg = el("svg", {
      class: "pair-chart", "data-pair": pair, "data-window": opts.window || "", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
      role: "img", "aria-label": `${pair}: a candle per window (first, max, min and last rate), the batch average and update counts`,
    });
    const data = windows.filter(shown);
    if (!data.length) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg, "no windows yet");
      container.replaceChildren(svg);
      return svg;
    }
    const slide = spec.slide_us, size = spec.size_us;
    const x0 = data[0].start_us, x1 = data[data.length - 1].start_us + size;
    let lo = Infinity, hi = -Infinity, maxCount = 1;
    for (const w of data) {
      for (const a of [w.stream, w.batch]) {
        if (!a) continue;
        lo = Math.min(lo, a.min);
        hi = Math.max(hi, a.max);
      }
      maxCount = Math.max(maxCount, shown(w).count);
    }
    if (hi - lo < Math.abs(hi) * 1e-9 || hi === lo) {
      const d = Math.abs(hi) * 0.01 || 1;
      lo -= d;
      hi += d;
    }
    const pad = (hi - lo) * 0.06;
    lo -= pad;
    hi += pad;
    const px = (us) => m.left + (us - x0) / (x1 - x0) * (W - m.left - m.right);
    const py = (v) => rateBottom - (v - lo) / (hi - lo) * (rateBottom - rateTop);
    const pc = (n) => countBottom - n / maxCount * (countBottom - countTop);
    const bw = Math.max(1, px(x0 + slide) - px(x0) - (px(x0 + slide) - px(x0) > 4 ? 1 : 0));
    const slot = (w) => px(w.start_us + size - slide);
    const cx = (w) => slot(w) + bw / 2;
    const dec = axes(svg, { W, H, m, rateTop, rateBottom, countTop, countBottom, lo, hi, x0, x1, maxCount, base, quote, px, py });

    // Gaps: no window at all between two runs (no update of the pair then), shaded and named.
    const plot = el("g", { class: "plot" }, svg);
    const all = runs(data, slide);
    for (let i = 1; i < all.length; i++) {
      const from = all[i - 1][all[i - 1].length - 1].start_us + slide, to = all[i][0].start_us;
      const x = px(from + size - slide), width = Math.max(2, px(to + size - slide) - x);
      const mark = el("rect", { class: "gap-mark", x: x, y: rateTop, width: width, height: countBottom - rateTop, "data-from": iso(from), "data-to": iso(to) }, plot);
      el("title", {}, mark, `no updates from ${timeLabel(from, true, true)} to ${timeLabel(to, true, true)} (a gap: the producer was down, or the pair had no data)`);
    }
    // Batch average, candles, counts, marks.
    for (const run of all) {
      const batch = run.filter((w) => w.batch).map((w) => `${cx(w).toFixed(1)},${py(w.batch.avg).toFixed(1)}`);
      if (batch.length > 1) el("polyline", { class: "batch-avg", points: batch.join(" ") }, plot);
    }
    for (const w of data) {
      const a = shown(w);
      const g = el("g", { class: "window status-" + w.status + (w.backfilled ? " backfilled" : ""), "data-start": iso(w.start_us), "data-status": w.status }, plot);
      if (w.backfilled) {
        const mark = el("rect", { class: "backfill-mark", x: slot(w), y: rateTop - 6, width: bw + 1, height: 4 }, g);
        el("title", {}, mark, "written after the fact: its updates came more than a minute after the window ended (a gap filled from CoinAPI's history, or a backlog caught up)");
      }
      const x = slot(w);
      el("rect", { class: "count" + (w.final ? "" : " open"), x: x, y: pc(a.count), width: bw, height: countBottom - pc(a.count) }, g);
      candle(g, w, cx(w), bw, py);
      if (BAD[w.status]) {
        el("rect", { class: "diff-mark", x: px(w.start_us), y: rateTop, width: Math.max(2, px(w.start_us + size) - px(w.start_us)), height: rateBottom - rateTop }, g);
        el("circle", { class: "diff-dot", cx: cx(w), cy: py(a.avg), r: 4.5 }, g);
      } else if (!w.final || w.status === "open") {
        el("circle", { class: "open-dot", cx: cx(w), cy: py(a.max) - 5, r: 2.5 }, g);
      }
      const hit = el("rect", { class: "hit", x: x, y: rateTop, width: bw + 1, height: countBottom - rateTop }, g);
      el("title", {}, hit, tooltip(w, dec + 2));
    }
    legend(svg, m);
    container.replaceChildren(svg);
    return svg;
  }

  // The axes: rate ticks and grid, update counts, time ticks, titles. Returns the rate labels'
  // decimals.
  function axes(svg, a) {
    const { W, H, m, rateTop, rateBottom, countTop, countBottom, lo, hi, x0, x1, maxCount, base, quote, px, py } = a;
    const yAxis = el("g", { class: "axis y-axis" }, svg);
    const yStep = niceStep(hi - lo, 5);
    const dec = Math.max(0, Math.min(10, -Math.floor(Math.log10(yStep))));
    for (let v = Math.ceil(lo / yStep) * yStep; v <= hi; v += yStep) {
      const y = py(v);
      el("line", { x1: m.left, x2: W - m.right, y1: y, y2: y, class: "grid" }, yAxis);
      el("text", { x: m.left - 6, y: y + 4, "text-anchor": "end" }, yAxis, fmt(v, dec));
    }
    el("text", { class: "axis-title", transform: `translate(14 ${(rateTop + rateBottom) / 2}) rotate(-90)`, "text-anchor": "middle" },
      yAxis, `rate (${quote} per ${base})`);
    el("text", { x: m.left - 6, y: (countTop + countBottom) / 2 + 4, "text-anchor": "end" }, yAxis, fmt(maxCount, 0));
    el("text", { class: "axis-title", transform: `translate(14 ${(countTop + countBottom) / 2}) rotate(-90)`, "text-anchor": "middle" },
      yAxis, "updates");
    el("line", { x1: m.left, x2: W - m.right, y1: countBottom, y2: countBottom, class: "baseline" }, yAxis);
    const xAxis = el("g", { class: "axis x-axis" }, svg);
    const span = x1 - x0;
    const step = TIME_STEPS.find((s) => span / s <= 8) || 7 * DAY;
    let lastDay = "";
    for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
      const x = px(t);
      const day = iso(t).slice(0, 10);
      el("line", { x1: x, x2: x, y1: rateTop, y2: countBottom, class: "grid" }, xAxis);
      const label = timeLabel(t, day !== lastDay, step < MINUTE);
      // A label that would run past the plot's right edge is left out (its grid line stays).
      if (x + label.length * 3.5 <= W) {
        el("text", { x: x, y: H - m.bottom + 14, "text-anchor": "middle" }, xAxis, label);
      }
      lastDay = day;
    }
    el("text", { x: (m.left + W - m.right) / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, xAxis,
      "window (UTC)");
    return dec;
  }

  function legend(svg, m) {
    const g = el("g", { class: "legend", transform: `translate(${m.left} 14)` }, svg);
    let lx = 0;
    const item = (cls, label, shape) => {
      if (shape === "rect") el("rect", { class: cls, x: lx, y: -8, width: 14, height: 9 }, g);
      else if (shape === "dot") el("circle", { class: cls, cx: lx + 7, cy: -4, r: 4 }, g);
      else el("line", { class: cls, x1: lx, x2: lx + 16, y1: -4, y2: -4 }, g);
      el("text", { x: lx + 20, y: 0 }, g, label);
      lx += 26 + label.length * 6.2;
    };
    item("candle up", "stream: first to last rate rose", "rect");
    item("candle down", "fell (wick: min to max)", "rect");
    item("batch-avg", "batch average", "line");
    item("count", "updates", "rect");
    item("diff-dot", "stream and batch differ", "dot");
    item("open-dot", "open (not final)", "dot");
    item("gap-mark", "gap: no updates", "rect");
    item("backfill-mark", "backfilled", "rect");
  }

  function tooltip(w, dec) {
    const side = (name, a) => a ? `${name}: ${a.count} updates, avg ${fmt(a.avg, dec)}, min ${fmt(a.min, dec)}, max ${fmt(a.max, dec)}` : `${name}: none`;
    const oc = w.first_rate !== undefined ? `, first ${fmt(w.first_rate, dec)}, last ${fmt(w.last_rate, dec)}` : "";
    return `${w.pair} window ${timeLabel(w.start_us, true, true)} to ${timeLabel(w.end_us, false, true)} UTC` +
      `\n${side("stream", w.stream)}${oc}${w.stream ? (w.final ? " (final)" : " (open)") : ""}\n${side("batch", w.batch)}` +
      `\nstatus: ${w.status}${w.what ? " (" + w.what + ")" : ""}`;
  }

  // The end-to-end latency histogram: [[upper bound ms, updates], ...].
  function histogram(container, buckets, opts) {
    opts = opts || {};
    const W = opts.width || Math.max(420, Math.min(900, container.clientWidth || 640));
    const H = opts.height || 220;
    const m = { left: 70, right: 12, top: 14, bottom: 46 };
    const svg = el("svg", { class: "latency-histogram", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "end-to-end latency histogram" });
    if (!buckets || !buckets.length) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, svg, "no latency samples yet");
      container.replaceChildren(svg);
      return svg;
    }
    // Up to one empty bucket past the last filled one: the tail of empty buckets says nothing.
    const last = buckets.reduce((k, b, i) => (b[1] > 0 ? i : k), 0);
    buckets = buckets.slice(0, Math.min(buckets.length, last + 2));
    const max = Math.max(1, ...buckets.map((b) => b[1]));
    const total = buckets.reduce((s, b) => s + b[1], 0);
    const bw = (W - m.left - m.right) / buckets.length;
    const py = (n) => H - m.bottom - n / max * (H - m.top - m.bottom);
    const axis = el("g", { class: "axis" }, svg);
    const step = niceStep(max, 4);
    for (let v = 0; v <= max; v += step) {
      el("line", { x1: m.left, x2: W - m.right, y1: py(v), y2: py(v), class: "grid" }, axis);
      el("text", { x: m.left - 6, y: py(v) + 4, "text-anchor": "end" }, axis, fmt(v, 0));
    }
    el("text", { class: "axis-title", transform: `translate(14 ${(H - m.bottom + m.top) / 2}) rotate(-90)`, "text-anchor": "middle" }, axis, "updates");
    let lower = 0;
    buckets.forEach(([upper, n], i) => {
      const x = m.left + i * bw;
      const g = el("g", { class: "bucket" }, svg);
      const r = el("rect", { class: "bar", x: x + 1, y: py(n), width: Math.max(1, bw - 2), height: H - m.bottom - py(n) }, g);
      el("title", {}, r, `${lower} to ${upper} ms: ${n} updates (${total ? (100 * n / total).toFixed(1) : 0}%)`);
      const label = "≤" + fmt(upper, 0);
      // Every k-th label, so that labels about 7 px per character never overlap.
      const every = Math.ceil((7 * (label.length + 1)) / bw);
      if (i % every === 0) {
        el("text", { x: x + bw / 2, y: H - m.bottom + 14, "text-anchor": "middle" }, axis, label);
      }
      lower = upper;
    });
    el("text", { x: (m.left + W - m.right) / 2, y: H - 8, "text-anchor": "middle", class: "axis-title" }, axis,
      "end-to-end latency, ms (bucket upper bound): received to committed");
    container.replaceChildren(svg);
    return svg;
  }

  global.CoinCharts = { pairChart, histogram, windowSpan, timeLabel, iso, fmt };
})(window);
