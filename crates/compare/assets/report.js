// The static HTML report: its charts from the JSON it carries, by the dashboard's chart script.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("report-data").textContent);
  CoinCharts.histogram(document.getElementById("latency"), data.latency_histogram);
  const charts = document.getElementById("charts");
  for (const pair of Object.keys(data.windows)) {
    const section = document.createElement("section");
    section.className = "chart";
    const h = document.createElement("h3");
    h.textContent = pair + " (" + CoinCharts.windowSpan(data.spec) + ")";
    const box = document.createElement("div");
    section.append(h, box);
    charts.appendChild(section);
    CoinCharts.pairChart(box, pair, data.windows[pair], data.spec, { width: 900 });
  }
})();
