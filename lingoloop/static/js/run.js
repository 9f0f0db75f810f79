// The transcript page: status, progress and segments live from the run's event stream; the
// player plays from the segment you select; cancel and retry.
(function () {
  "use strict";
  var root = document.getElementById("run");
  if (!root) return;
  var runId = root.dataset.runId;
  var badge = document.getElementById("run-badge");
  var detail = document.getElementById("run-detail");
  var bar = document.getElementById("run-bar");
  var errorBox = document.getElementById("run-error");
  var notice = document.getElementById("run-notice");
  var connection = document.getElementById("connection");
  var cancelButton = document.getElementById("run-cancel");
  var retryButton = document.getElementById("run-retry");
  var downloads = document.getElementById("downloads");
  var list = document.getElementById("segments");
  var hint = document.getElementById("segments-hint");
  var empty = document.getElementById("segments-empty");
  var audio = document.getElementById("audio");
  var language = document.getElementById("run-language");

  var status = root.dataset.status;
  var attempts = null;      // of the attempt whose segments are shown
  var cancelling = false;
  var events = null;
  var lastEventId = root.dataset.lastEventId;
  // The page renders the progress as a number; the width follows from it here (the Content
  // Security Policy allows no inline style).
  LL.setBar(bar, bar.getAttribute("aria-valuenow"));

  // --- Status -------------------------------------------------------------------------------

  function render(run) {
    status = run.status;
    root.dataset.status = status;
    LL.setBadge(badge, status);
    var active = status === "queued" || status === "processing";
    if (status === "processing" && cancelling) detail.textContent = "Stopping at the next segment…";
    else if (status === "succeeded") detail.textContent = run.timeElapsed != null ? "Transcribed in " + LL.clock(run.timeElapsed) : "";
    else if (status === "failed") detail.textContent = "";
    else detail.textContent = LL.runDetail(run);

    bar.hidden = !active;
    if (active) {
      var shown = Number(bar.getAttribute("aria-valuenow")) || 0;
      // Progress never goes back within an attempt; a new attempt starts from nothing.
      LL.setBar(bar, status === "queued" ? 0 : Math.max(run.attempts === attempts ? shown : 0, run.progress || 0));
    }
    if (attempts !== null && run.attempts > attempts && status === "processing") clearSegments();
    if (status === "processing" || attempts === null) attempts = run.attempts;

    cancelButton.hidden = !active;
    cancelButton.disabled = cancelling;
    retryButton.hidden = !(status === "failed" || status === "cancelled");
    downloads.hidden = status !== "succeeded";
    errorBox.hidden = status !== "failed";
    if (status === "failed") errorBox.textContent = (run.error && run.error.message) || "The transcription failed.";
    if (!active) { cancelling = false; notice.hidden = true; }
    if (status === "succeeded" && !list.children.length) {
      empty.textContent = "No speech was found in this recording.";
    } else if (!active && status !== "succeeded") {
      empty.textContent = "There is no transcript.";
    }
  }

  // --- Segments -----------------------------------------------------------------------------

  function segmentElement(segment) {
    var li = document.createElement("li");
    var button = document.createElement("button");
    button.type = "button";
    button.className = "segment";
    button.dataset.id = segment.id;
    button.dataset.start = segment.start;
    button.dataset.end = segment.end;
    var ts = document.createElement("span");
    ts.className = "ts";
    var hidden = document.createElement("span");
    hidden.className = "visually-hidden";
    hidden.textContent = "Play from ";
    ts.appendChild(hidden);
    ts.appendChild(document.createTextNode(LL.clock(segment.start * 1000)));
    var text = document.createElement("span");
    text.className = "seg-text";
    text.textContent = String(segment.text || "").trim();
    button.appendChild(ts);
    button.appendChild(document.createTextNode(" "));
    button.appendChild(text);
    li.appendChild(button);
    return li;
  }

  // Segments are keyed by id: one delivered twice (a replay after a reconnect) replaces itself.
  function addSegments(segments) {
    (segments || []).forEach(function (segment) {
      var element = segmentElement(segment);
      var existing = list.querySelector('.segment[data-id="' + segment.id + '"]');
      if (existing) list.replaceChild(element, existing.parentNode);
      else list.appendChild(element);
    });
    var any = list.children.length > 0;
    empty.hidden = any;
    hint.hidden = !any || !audio;
  }

  function clearSegments() {
    list.textContent = "";
    empty.hidden = false;
    empty.textContent = "The transcript appears here, line by line, as it is produced.";
    hint.hidden = true;
  }

  // The finished run's segments are the reference: what the stream showed is replaced by them.
  function loadFinal() {
    LL.request("GET", "/api/runs/" + runId).then(function (answer) {
      if (!answer.ok || answer.body.status !== "succeeded") return;
      list.textContent = "";
      addSegments(answer.body.segments);
      if (answer.body.language) {
        language.hidden = false;
        language.querySelector("span").textContent = answer.body.language;
      }
      render(answer.body);
    });
  }

  // --- Events -------------------------------------------------------------------------------

  function follow() {
    if (events) return;
    events = LL.stream("/api/runs/" + runId + "/events", {
      init: render,
      update: function (run) {
        render(run);
        addSegments(run.newSegments);
      },
      error: function (data) {
        var message = (data.error && data.error.message) || "unknown error";
        notice.textContent = data.willRetry
          ? "Attempt " + data.attempt + " failed (" + message + "). It will be tried again" +
            (data.retryAt ? " at " + new Date(data.retryAt).toLocaleTimeString() : "") + "."
          : "";
        notice.hidden = !data.willRetry;
      },
      done: function (run) {
        render(run);
        stop();
        if (run.status === "succeeded") loadFinal();
      }
    }, {
      lastEventId: lastEventId,
      onState: function (state) {
        connection.hidden = state === "live";
        connection.textContent = state === "live" ? "" : "Connection lost; reconnecting…";
      }
    });
  }

  function stop() {
    if (!events) return;
    lastEventId = events.lastEventId() || lastEventId;
    events.close();
    events = null;
    connection.hidden = true;
  }

  // --- Cancel and retry ---------------------------------------------------------------------

  cancelButton.addEventListener("click", function () {
    cancelling = true;
    cancelButton.disabled = true;
    LL.request("POST", "/api/runs/" + runId + "/cancel").then(function (answer) {
      if (answer.ok) {
        render(answer.body);
        if (LL.isFinished(answer.body.status)) stop();
        return;
      }
      cancelling = false;
      cancelButton.disabled = false;
      if (answer.status !== 409) { // 409: it finished first; its `done` is on its way
        notice.textContent = "Could not cancel: " + LL.errorMessage(answer.status, answer.body);
        notice.hidden = false;
      }
    });
  });

  retryButton.addEventListener("click", function () {
    retryButton.disabled = true;
    LL.request("POST", "/api/runs/" + runId + "/retry").then(function (answer) {
      retryButton.disabled = false;
      if (!answer.ok) {
        notice.textContent = "Could not retry: " + LL.errorMessage(answer.status, answer.body);
        notice.hidden = false;
        return;
      }
      notice.hidden = true;
      attempts = null;
      clearSegments();
      render(answer.body);
      follow(); // from the last event seen: nothing the retry started is missed
    });
  });

  // --- Player -------------------------------------------------------------------------------

  list.addEventListener("click", function (event) {
    var segment = event.target.closest(".segment");
    if (!segment || !audio) return;
    audio.currentTime = Number(segment.dataset.start) || 0;
    var playing = audio.play();
    if (playing && playing.catch) playing.catch(function () { /* the user can press play */ });
  });

  if (audio) {
    var current = null;
    audio.addEventListener("timeupdate", function () {
      var t = audio.currentTime;
      if (current && t >= Number(current.dataset.start) && t < Number(current.dataset.end)) return;
      if (current) { current.classList.remove("is-current"); current.removeAttribute("aria-current"); }
      current = null;
      Array.prototype.some.call(list.querySelectorAll(".segment"), function (segment) {
        if (t >= Number(segment.dataset.start) && t < Number(segment.dataset.end)) {
          current = segment;
          segment.classList.add("is-current");
          segment.setAttribute("aria-current", "true");
          return true;
        }
        return false;
      });
    });
    audio.addEventListener("error", function () {
      var player = audio.parentNode;
      var message = document.createElement("p");
      message.className = "muted";
      message.textContent = "The audio cannot be played here. The transcript is below.";
      player.replaceChild(message, audio);
      audio = null;
      hint.hidden = true;
    });
  }

  var initial = LL.parseJson(document.getElementById("run-data").textContent);
  if (initial) render(initial);
  addSegments([]);
  if (status === "queued" || status === "processing") follow();
})();
