// desmigratif dashboard: the few things that need a script. Pages work without it.
"use strict";

// Live progress of an announcement: poll its counts until it is done.
(function () {
  var box = document.querySelector("[data-progress-url]");
  if (!box) { return; }
  var url = box.getAttribute("data-progress-url");
  var bar = box.querySelector("progress");
  function set(name, value) {
    var el = box.querySelector('[data-field="' + name + '"]');
    if (el) { el.textContent = String(value); }
  }
  function tick() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (res) { return res.ok ? res.json() : null; })
      .then(function (p) {
        if (!p) { return; }
        var settled = p.recipients - p.queued;
        if (bar) { bar.max = Math.max(1, p.recipients); bar.value = settled; }
        ["recipients", "queued", "sent", "failed", "opted_out", "held", "eta_s"]
          .forEach(function (k) { set(k, p[k]); });
        set("status", p.status_label);
        set("waiting_label", p.waiting_label || "");
        box.setAttribute("data-status", p.status);
        if (p.status !== "done" && p.status !== "cancelled") { setTimeout(tick, 1500); }
      })
      .catch(function () { setTimeout(tick, 5000); });
  }
  if (box.getAttribute("data-status") !== "done") { setTimeout(tick, 1000); }
})();

// Ask before a form that deletes or sends to everyone.
document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) { event.preventDefault(); }
});

// The language menu in the footer applies at once.
document.addEventListener("change", function (event) {
  if (event.target.matches("[data-autosubmit]")) { event.target.form.submit(); }
});
