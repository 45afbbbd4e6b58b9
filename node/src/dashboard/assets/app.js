// Live updates: the htmx SSE extension opens one EventSource per page. Close it when the page
// is left, or the browser keeps the connection (it counts against its six per host) until it
// times out, and navigation stalls after a few pages.
(function () {
  var sources = [];
  var create = htmx.createEventSource;
  htmx.createEventSource = function (url) {
    var source = create(url);
    sources.push(source);
    return source;
  };
  window.addEventListener("pagehide", function () {
    sources.forEach(function (s) { s.close(); });
    sources = [];
  });
})();
// Shows whether the live connection is up (the dot beside "Live" turns grey when it drops).
document.addEventListener("htmx:sseOpen", function () { document.body.classList.remove("offline"); });
document.addEventListener("htmx:sseError", function () { document.body.classList.add("offline"); });
