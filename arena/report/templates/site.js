// Watermark Arena's leaderboard site: sortable tables and a text filter, no dependencies.
"use strict";

// A cell's sort value: its data-sort when it has one, else its text; a numeric column's
// empty or unreadable value is null, and sorts after every number in both directions.
function cellValue(row, index, type) {
  const cell = row.cells[index];
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  if (type === "num") {
    const number = parseFloat(raw);
    return Number.isNaN(number) ? null : number;
  }
  return raw.toLowerCase();
}

function compare(x, y, ascending) {
  if (x === null || y === null) return x === y ? 0 : x === null ? 1 : -1;
  const order = x < y ? -1 : x > y ? 1 : 0;
  return ascending ? order : -order;
}

function sortBy(table, header) {
  const index = Array.from(header.parentNode.children).indexOf(header);
  const type = header.dataset.type || "text";
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  for (const other of header.parentNode.children) other.setAttribute("aria-sort", "none");
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows).map((row, position) => ({
    row,
    position: row.dataset.position === undefined ? position : Number(row.dataset.position),
    value: cellValue(row, index, type),
  }));
  // Ties keep the page's own order (the ranking), whichever way the column sorts.
  rows.sort((a, b) => compare(a.value, b.value, ascending) || a.position - b.position);
  for (const { row } of rows) body.appendChild(row);
}

function filterRows(table, text) {
  const words = text.toLowerCase().split(/\s+/).filter(Boolean);
  for (const row of table.tBodies[0].rows) {
    const content = row.textContent.toLowerCase();
    row.classList.toggle("hidden", !words.every((word) => content.includes(word)));
  }
}

for (const table of document.querySelectorAll("table.sortable")) {
  Array.from(table.tBodies[0].rows).forEach((row, position) => {
    row.dataset.position = String(position);
  });
  for (const header of table.tHead.rows[0].cells) {
    const button = header.querySelector("button") || header;
    button.addEventListener("click", () => sortBy(table, header));
  }
}

for (const input of document.querySelectorAll("input[data-filters]")) {
  const table = document.getElementById(input.dataset.filters);
  input.addEventListener("input", () => filterRows(table, input.value));
}
