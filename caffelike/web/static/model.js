// The model page's live parts: progress, time left, iteration and epoch from the job's events, and the curves
// picture, fetched again only when the server says a curve gained a point (curves_version).
"use strict";

document.addEventListener("jobstate", (event) => {
  const state = event.detail;
  const page = document.querySelector("[data-model-job]");
  if (!page || state.curves_version === undefined) return;
  const set = (selector, text) => document.querySelectorAll(selector).forEach((el) => { el.textContent = text; });
  const shown = (v) => (v === null || v === undefined ? "-" : String(v));
  document.querySelectorAll("[data-progress]").forEach((el) => { el.value = state.progress || 0; });
  set("[data-progress-text]", (100 * (state.progress || 0)).toFixed(1) + "%");
  set("[data-remaining]", formatDuration(state.remaining));
  set("[data-iteration]", shown(state.iteration));
  set("[data-epoch]", shown(state.epoch));
  const table = document.getElementById("latest");
  if (table && state.latest) {
    const rows = [];
    for (const [name, v] of Object.entries(state.latest.train || {})) rows.push(["train " + name, v]);
    for (const [name, v] of Object.entries(state.latest.test || {})) rows.push(["val " + name, v]);
    if (state.latest.lr !== null && state.latest.lr !== undefined) rows.push(["learning rate", state.latest.lr]);
    table.querySelectorAll("tr.value").forEach((tr) => tr.remove());
    for (const [name, v] of rows) {
      const tr = table.insertRow();
      tr.className = "value";
      tr.insertCell().textContent = name;
      const cell = tr.insertCell();
      cell.className = "num";
      cell.textContent = v === null ? "-" : shortNumber(v);
    }
  }
  if (String(state.curves_version) !== page.dataset.curvesVersion) {
    page.dataset.curvesVersion = String(state.curves_version);
    document.querySelectorAll("img[data-curves]").forEach((img) => refreshCurves(img, state.curves_version));
  }
});

// Fetch the new picture off-screen and show it once loaded.  Setting img.src at every event would abort a
// picture still being drawn (a busy server takes longer than the events' period) and show nothing at all.
function refreshCurves(img, version) {
  img.dataset.wanted = String(version);
  if (img.dataset.loading) return;
  const url = img.dataset.src + "?v=" + encodeURIComponent(version);
  const next = new Image();
  img.dataset.loading = "1";
  const done = () => {
    delete img.dataset.loading;
    if (img.dataset.wanted !== String(version)) refreshCurves(img, img.dataset.wanted);
  };
  next.onload = () => { img.src = url; done(); };
  next.onerror = done;
  next.src = url;
}

// The log panel opens on its last lines, where training is.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-model-job] [data-log]").forEach((el) => { el.scrollTop = el.scrollHeight; });
});

// Four significant digits, without trailing zeros (as the page's '%.4g').
function shortNumber(v) {
  const text = Number(v).toPrecision(4);
  return text.includes(".") && !text.includes("e") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}
