// Watermark Arena's leaderboard site: sortable tables and a text filter, no dependencies.
"use strict";

function cellValue(row, index, type) {
  const cell = row.cells[index];
  const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  if (type === "num") {
    const number = parseFloat(raw);
    return Number.isNaN(number) ? Infinity : number;
  }
  return raw.toLowerCase();
}

function sortBy(table, header) {
  const index = Array.from(header.parentNode.children).indexOf(header);
  const type = header.dataset.type || "text";
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  for (const other of header.parentNode.children) other.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows).map((row, position) => ({ row, position }));
  rows.sort((a, b) => {
    const x = cellValue(a.row, index, type);
    const y = cellValue(b.row, index, type);
    const order = x < y ? -1 : x > y ? 1 : a.position - b.position;
    return ascending ? order : -order;
  });
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
  for (const header of table.tHead.rows[0].cells) {
    header.tabIndex = 0;
    header.addEventListener("click", () => sortBy(table, header));
    header.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        sortBy(table, header);
      }
    });
  }
}

for (const input of document.querySelectorAll("input[data-filters]")) {
  const table = document.getElementById(input.dataset.filters);
  input.addEventListener("input", () => filterRows(table, input.value));
}
