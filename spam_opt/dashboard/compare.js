// The comparison page's behaviour: tables sorted by a click on a header, and each run's detail plot
// drawn only when its <details> is first opened (twenty heat maps drawn at load would make the page slow).
"use strict";

function sortTable(table, th, column) {
  const direction = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
  table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", direction);
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const key = (row) => row.cells[column].dataset.sort;
  const numeric = rows.every((r) => key(r) === "" || !Number.isNaN(Number(key(r))));
  rows.sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");  // missing values last, either way
    const order = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, {numeric: true});
    return direction === "ascending" ? order : -order;
  });
  rows.forEach((r) => body.appendChild(r));
}

document.querySelectorAll("table.runs").forEach((table) => {
  table.querySelectorAll("th").forEach((th, column) => {
    th.addEventListener("click", () => sortTable(table, th, column));
  });
});

function drawDetail(details) {
  const target = details.querySelector(".detail-plot");
  if (!target || target.dataset.drawn) return;
  const figure = JSON.parse(details.querySelector("script.detail-figure").textContent);
  Plotly.newPlot(target, figure.data, figure.layout, {responsive: true});
  target.dataset.drawn = "1";
}

// Opened runs stay open when --watch reloads the page (sessionStorage may be refused for file:// pages).
function remember(key, open) {
  try {
    if (open) sessionStorage.setItem(key, "1"); else sessionStorage.removeItem(key);
  } catch (e) { /* not remembered */ }
}

function remembered(key) {
  try { return sessionStorage.getItem(key) === "1"; } catch (e) { return false; }
}

document.querySelectorAll("details.run-detail").forEach((details) => {
  const key = "spam-dashboard:" + location.pathname + "#" + details.id;
  details.addEventListener("toggle", () => {
    if (details.open) drawDetail(details);
    remember(key, details.open);
  });
  if (remembered(key)) details.open = true;
});
