// caffelike serve: live job pages through server-sent events (no libraries, no network beyond this server).
"use strict";

// Follow /jobs/<id>/events: onState(state) receives each JSON state the server sends.
function watchJob(jobId, onState) {
  if (!window.EventSource) return null;
  const source = new EventSource("/jobs/" + encodeURIComponent(jobId) + "/events");
  source.onmessage = (event) => {
    const state = JSON.parse(event.data);
    onState(state);
    if (["Done", "Aborted", "Error"].includes(state.status)) source.close();
  };
  return source;
}

// The parts every job page shows: [data-status] badges, [data-log] log tail, [data-elapsed], [data-job-error].
function showJobState(state) {
  document.querySelectorAll("[data-status]").forEach((el) => {
    el.textContent = state.status;
    el.className = "badge status-" + state.status.toLowerCase();
  });
  document.querySelectorAll("[data-log]").forEach((el) => {
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 4;
    el.textContent = state.log_tail || "";
    if (atEnd) el.scrollTop = el.scrollHeight;
  });
  document.querySelectorAll("[data-elapsed]").forEach((el) => { el.textContent = formatDuration(state.elapsed); });
  if (!["Initialized", "Waiting", "Running"].includes(state.status)) {
    document.querySelectorAll("[data-abort]").forEach((el) => el.remove());
  }
}

function formatDuration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  const mm = String(m).padStart(2, "0"), ss = String(s).padStart(2, "0");
  return h ? h + ":" + mm + ":" + ss : m + ":" + ss;
}

// Pages opt in with <body data-watch-job="<id>"> or an element carrying data-watch-job.
document.addEventListener("DOMContentLoaded", () => {
  const el = document.querySelector("[data-watch-job]");
  if (!el) return;
  watchJob(el.dataset.watchJob, (state) => {
    showJobState(state);
    document.dispatchEvent(new CustomEvent("jobstate", {detail: state}));
    if (["Done", "Aborted", "Error"].includes(state.status) && el.dataset.reloadWhenDone !== undefined) {
      window.location.reload();
    }
  });
});
