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

  function csvCell(text) {
    return /[";\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  /* "CSV" under every sortable table: the rows shown, ';'-separated, numbers without the thousands
     separator (so a spreadsheet reads "1234,56" as a number). */
  function addCsvButton(table) {
    var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var exported = heads.map(function (th) { return th.getAttribute("data-type") !== null; });
    var button = document.createElement("button");
    button.type = "button";
    button.className = "small csv";
    button.textContent = "Скачать CSV";
    button.setAttribute("aria-label", "Скачать таблицу в CSV" + (table.caption ? ": " + table.caption.textContent.trim() : ""));
    button.addEventListener("click", function () {
      var lines = [heads.filter(function (_, i) { return exported[i]; })
                        .map(function (th) { return csvCell(th.textContent.trim()); }).join(";")];
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var cells = [];
        heads.forEach(function (th, i) {
          if (!exported[i] || !row.cells[i]) return;
          var text = row.cells[i].textContent.replace(/\s+/g, " ").trim();
          if (th.getAttribute("data-type") === "number") text = text.replace(/[\s\u00a0]/g, "");
          cells.push(csvCell(text));
        });
        lines.push(cells.join(";"));
      });
      var blob = new Blob(["\ufeff" + lines.join("\n") + "\n"], { type: "text/csv;charset=utf-8" });
      var link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = (table.id || "table") + ".csv";
      document.body.appendChild(link);
      link.click();
      setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
    });
    var holder = table.parentElement.classList.contains("scroll") ? table.parentElement : table;
    holder.insertAdjacentElement("afterend", button);
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
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      addCsvButton(table);  // reads the header's text before the sort buttons wrap it
      makeSortable(table);
    });
    document.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-confirm]");
      if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
    });
    drawTurnovers();
  });
})();
