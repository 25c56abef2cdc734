// provisiond console: live updates over server-sent events. Pages work without it.
// When the daemon reports a change that concerns this page, the page's <main> is
// fetched again (X-Console-Fragment: 1) and swapped in place.
(function () {
  "use strict";
  var body = document.body;
  var scope = body.getAttribute("data-live") || "none";
  if (scope === "none" || !window.EventSource) { return; }
  var dot = document.getElementById("live-dot");
  var since = body.getAttribute("data-event-id") || "0";
  var timer = null, busy = false, again = false;

  function concerns(change) {
    if (scope === "all") { return true; }
    return scope === "machine:" + change.machine;
  }

  function typing() {
    var el = document.activeElement;
    return el && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName) && el.type !== "hidden";
  }

  function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    if (typing()) { timer = setTimeout(refresh, 1000); return; }
    busy = true;
    fetch(window.location.href, {
      headers: { "X-Console-Fragment": "1" }, credentials: "same-origin", redirect: "manual"
    }).then(function (r) {
      if (r.type === "opaqueredirect" || r.status === 401) { window.location.reload(); return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined) {
        document.getElementById("main").innerHTML = html;
        body.setAttribute("data-refreshed", String(Date.now()));
      }
    }).catch(function () { /* the next change retries */ }).then(function () {
      busy = false;
      if (again) { again = false; schedule(); }
    });
  }

  function schedule() { if (!timer) { timer = setTimeout(refresh, 250); } }

  var source = new EventSource("/ui/live?since=" + encodeURIComponent(since));
  source.onopen = function () { if (dot) { dot.classList.add("on"); } };
  source.onerror = function () { if (dot) { dot.classList.remove("on"); } };
  source.addEventListener("change", function (e) {
    var change;
    try { change = JSON.parse(e.data); } catch (err) { return; }
    if (concerns(change)) { schedule(); }
  });
  source.addEventListener("reload", function () { schedule(); });
  source.addEventListener("signed_out", function () { source.close(); window.location.reload(); });
})();
