// The static HTML report: its charts from the JSON it carries, by the dashboard's chart script:
// per window spec, a chart per pair in the spec's section.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  CoinCharts.histogram(document.getElementById("latency"), data.latency_histogram);
  for (const s of data.sections) {
    const charts = [...document.querySelectorAll("section.spec")].find((x) => x.dataset.window === s.label);
    if (!charts) continue;
    const box = charts.querySelector(".charts");
    for (const pair of Object.keys(s.windows)) {
      const section = document.createElement("section");
      section.className = "chart";
      section.dataset.pair = pair;
      const h = document.createElement("h4");
      h.textContent = pair + " (" + CoinCharts.windowSpan(s.spec) + ")";
      const div = document.createElement("div");
      section.append(h, div);
      box.appendChild(section);
      CoinCharts.pairChart(div, pair, s.windows[pair], s.spec, { width: 900, window: s.label });
    }
  }
})();
