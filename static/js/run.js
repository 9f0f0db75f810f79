// Follows one run live over its event stream (session cookie auth, no token in the URL).
(function () {
  "use strict";
  var root = document.getElementById("run");
  if (!root) return;
  var runId = root.dataset.runId;
  var statusEl = document.getElementById("status");
  var bar = document.getElementById("progress");
  var eta = document.getElementById("eta");
  var transcript = document.getElementById("transcript");
  var source = new EventSource("/api/runs/" + runId + "/events");

  function render(data) {
    statusEl.textContent = data.status;
    if (data.progress > Number(bar.value) || data.status !== "processing") bar.value = data.progress;
    if (data.status === "queued" && data.queuePosition) eta.textContent = "(place in queue: " + data.queuePosition + ")";
    else if (data.status === "processing" && data.estimatedTimeRemaining != null) eta.textContent = "(about " + data.estimatedTimeRemaining + " s left)";
    else eta.textContent = "";
  }
  source.addEventListener("init", function (e) { render(JSON.parse(e.data)); });
  source.addEventListener("update", function (e) {
    var data = JSON.parse(e.data);
    render(data);
    if (data.status === "processing" && data.progress === 0) transcript.textContent = "";
    (data.newSegments || []).forEach(function (s) {
      transcript.textContent += (transcript.textContent ? " " : "") + s.text;
    });
  });
  source.addEventListener("done", function (e) {
    var data = JSON.parse(e.data);
    render(data);
    if (data.text != null) transcript.textContent = data.text;
    if (data.error) transcript.textContent = data.error.message;
    source.close();
  });
})();
