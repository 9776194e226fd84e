// meterhub console: light progressive enhancement; every page works without it.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
document.addEventListener("click", (event) => {
  const back = event.target.closest("[data-back]");
  if (back && window.history.length > 1) {
    event.preventDefault();
    window.history.back();
  }
  const print = event.target.closest("[data-print]");
  if (print) {
    event.preventDefault();
    window.print();
  }
  const all = event.target.closest("[data-check-all]");
  if (all) {
    const name = all.getAttribute("data-check-all");
    document.querySelectorAll(`input[type=checkbox][name="${name}"]`).forEach((box) => { box.checked = all.checked; });
  }
});
// Elements with data-refresh="seconds" reload their page section until data-final is set on them.
function refreshLater(element) {
  const seconds = Number(element.getAttribute("data-refresh")) || 3;
  window.setTimeout(async () => {
    try {
      const response = await fetch(window.location.href, { headers: { "X-Partial": "1" }, credentials: "same-origin" });
      if (!response.ok) { return; }
      const html = await response.text();
      const doc = new DOMParser().parseFromString(html, "text/html");
      const fresh = doc.getElementById(element.id);
      if (fresh) {
        element.replaceWith(fresh);
        if (fresh.hasAttribute("data-refresh") && !fresh.hasAttribute("data-final")) { refreshLater(fresh); }
      }
    } catch (err) {
      refreshLater(element);
    }
  }, seconds * 1000);
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh][id]").forEach((element) => {
    if (!element.hasAttribute("data-final")) { refreshLater(element); }
  });
});
