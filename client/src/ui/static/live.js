// Kring local interface: live updates over server-sent events and the label list of
// the chosen community. No third-party code; served from the device itself.
(function () {
  "use strict";
  var busy = false;
  function refresh() {
    var live = document.querySelectorAll("[data-live]");
    if (!live.length || busy) { return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        busy = false;
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var fresh = el.id ? doc.getElementById(el.id) : null;
          if (fresh) { el.replaceWith(document.importNode(fresh, true)); }
        });
      })
      .catch(function () { busy = false; });
  }
  if (window.EventSource) {
    var events = new EventSource("/events");
    events.addEventListener("change", refresh);
  }
  function labels() {
    var community = document.getElementById("community");
    var label = document.getElementById("label");
    if (!community || !label || community.tagName !== "SELECT") { return; }
    var pick = function () {
      label.setAttribute("list", "labels-" + Math.max(community.selectedIndex, 0));
    };
    community.addEventListener("change", pick);
    pick();
  }
  document.addEventListener("DOMContentLoaded", labels);
})();
