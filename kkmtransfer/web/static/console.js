/* Small progressive enhancement: sortable tables, confirmations, the dashboard chart. The pages work
   without it (every command is a plain form). */
(function () {
  "use strict";

  function cellValue(row, index, type) {
    var cell = row.cells[index];
    if (!cell) return "";
    var raw = cell.getAttribute("data-sort") || cell.textContent.trim();
    if (type === "number") {
      var n = parseFloat(raw.replace(/[\s\u00a0]/g, "").replace(",", "."));
      return isNaN(n) ? -Infinity : n;
    }
    return raw;
  }

  function makeSortable(table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    Array.prototype.forEach.call(heads, function (th, index) {
      var type = th.getAttribute("data-type");
      if (!type) return;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "sort";
      button.textContent = th.textContent;
      button.setAttribute("aria-label", th.textContent + ": сортировать");
      th.textContent = "";
      th.appendChild(button);
      button.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index, type), y = cellValue(b, index, type);
          var c = x < y ? -1 : x > y ? 1 : 0;
          return ascending ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function drawTurnovers() {
    var canvas = document.getElementById("turnovers-chart");
    var source = document.getElementById("turnovers-data");
    if (!canvas || !source || typeof window.Chart === "undefined") return;
    var data = JSON.parse(source.textContent);
    var colours = { accrued: "#1f6f3f", spent: "#0a4fa3", expired: "#a10e0e", returned: "#7a4a00" };
    var titles = { accrued: "Начислено", spent: "Потрачено", expired: "Сгорело", returned: "Возвращено" };
    var datasets = Object.keys(titles).map(function (key) {
      return { label: titles[key], backgroundColor: colours[key], borderColor: colours[key],
               data: data.series[key].map(Number) };
    });
    var chart = new window.Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets: datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        scales: { x: { stacked: true }, y: { stacked: true } },
        plugins: { legend: { position: "bottom" } }
      }
    });
    canvas.setAttribute("data-rendered", String(chart.data.datasets.length));
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), makeSortable);
    document.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-confirm]");
      if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
    });
    drawTurnovers();
  });
})();
