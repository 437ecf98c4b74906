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
  if (String(state.curves_version) !== page.dataset.curvesVersion) {
    page.dataset.curvesVersion = String(state.curves_version);
    document.querySelectorAll("img[data-curves]").forEach((img) => {
      img.src = img.dataset.src + "?v=" + encodeURIComponent(state.curves_version);
    });
  }
});

// The log panel opens on its last lines, where training is.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-model-job] [data-log]").forEach((el) => { el.scrollTop = el.scrollHeight; });
});
