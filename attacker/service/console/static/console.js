// The audit console's only script: live progress without reloading, and gallery zoom.
// Pages work without it (progress shows the value at load time; images show at their fitted size).
"use strict";

const FINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);
const POLL_MS = 1000;

// Every element with data-poll="<status URL>" shows one audit's status and progress; when the audit
// reaches a final status the page reloads once, to show its results.
function followProgress(element) {
  const url = element.dataset.poll;
  const bar = element.querySelector("progress");
  const label = element.querySelector("[data-status]");
  const message = element.querySelector("[data-message]");
  async function tick() {
    let state;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok || !(response.headers.get("content-type") || "").includes("application/json")) {
        return; // logged out or gone: stop following; a reload shows why
      }
      state = await response.json();
    } catch (error) {
      window.setTimeout(tick, 4 * POLL_MS);
      return;
    }
    if (bar) { bar.value = state.progress; bar.textContent = Math.round(100 * state.progress) + " %"; }
    if (label) { label.textContent = state.status; }
    if (message) { message.textContent = state.message || ""; }
    element.dataset.status = state.status;
    if (FINAL.has(state.status)) {
      if (element.dataset.reloadWhenDone !== undefined) { window.location.reload(); }
      return;
    }
    window.setTimeout(tick, POLL_MS);
  }
  if (!FINAL.has(element.dataset.status)) { window.setTimeout(tick, POLL_MS); }
}

// A .zoom bar of buttons with data-scale sets its gallery's images to that multiple of their natural width.
function zoomControls(bar) {
  const gallery = document.getElementById(bar.dataset.target);
  if (!gallery) { return; }
  bar.hidden = false;
  for (const button of bar.querySelectorAll("button[data-scale]")) {
    button.addEventListener("click", () => {
      const scale = Number(button.dataset.scale);
      for (const image of gallery.querySelectorAll("img")) {
        image.style.width = scale > 0 ? image.naturalWidth * scale + "px" : "";
        image.style.maxWidth = scale > 0 ? "none" : "";
      }
      for (const other of bar.querySelectorAll("button[data-scale]")) {
        other.setAttribute("aria-pressed", String(other === button));
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-poll]").forEach(followProgress);
  document.querySelectorAll(".zoom[data-target]").forEach(zoomControls);
});
