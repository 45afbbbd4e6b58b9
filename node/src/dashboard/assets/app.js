// Shows whether the live connection is up (the dot beside "Live" turns grey when it drops).
document.addEventListener("htmx:sseOpen", function () { document.body.classList.remove("offline"); });
document.addEventListener("htmx:sseError", function () { document.body.classList.add("offline"); });
