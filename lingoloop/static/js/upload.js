// The upload page: files are sent one at a time (XMLHttpRequest, for its upload progress), then
// followed live until they finish. All of them are followed over one stream, /api/runs/events:
// a browser opens at most six connections to a server, so one EventSource per file would stall
// further uploads and even navigation once a few files are queued.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) return;
  var input = document.getElementById("files");
  var dropzone = document.getElementById("dropzone");
  var list = document.getElementById("uploads");
  var section = document.getElementById("uploads-section");
  var template = document.getElementById("upload-item");
  var startButton = document.getElementById("start");
  var startHint = document.getElementById("start-hint");
  var modelSelect = document.getElementById("model");
  var taskSelect = document.getElementById("task");
  var languageSelect = document.getElementById("language");
  var maxBytes = Number(form.dataset.maxBytes) || Infinity;

  var items = [];          // every file on the page, in the order added
  var byRun = {};          // runId -> item
  var latest = {};         // runId -> the last event seen before its upload answered
  var uploading = null;    // the item being sent
  var events = null;       // the stream, open while something is in flight

  // --- Options ------------------------------------------------------------------------------

  // Each model offers the languages it knows; English-only ones cannot translate.
  function syncModelOptions() {
    var chosen = modelSelect.options[modelSelect.selectedIndex];
    var englishOnly = !chosen || chosen.dataset.multilingual !== "true";
    var known = (chosen ? chosen.dataset.languages || "en" : "en").split(" ");
    var translate = taskSelect.querySelector("option[value=translate]");
    translate.disabled = englishOnly;
    if (englishOnly && taskSelect.value === "translate") taskSelect.value = "transcribe";
    Array.prototype.forEach.call(languageSelect.options, function (option) {
      option.disabled = option.value !== "" && known.indexOf(option.value) < 0;
    });
    if (languageSelect.options[languageSelect.selectedIndex].disabled) languageSelect.value = "";
    document.getElementById("model-hint").textContent = englishOnly
      ? "English only: it transcribes English and does not translate."
      : "Many languages; it can translate them into English.";
  }
  modelSelect.addEventListener("change", syncModelOptions);
  syncModelOptions();

  var channelsBox = document.getElementById("channels");
  channelsBox.addEventListener("change", function () {
    document.getElementById("speaker-names-field").hidden = !channelsBox.checked;
  });

  function currentOptions() {
    var data = {};
    data.language = languageSelect.value;
    data.model = modelSelect.value;
    data.task = taskSelect.value;
    data.wordTimestamps = document.getElementById("word-timestamps").checked ? "true" : "false";
    if (channelsBox.checked) {
      data.channels = "separate";
      data.speakerNames = document.getElementById("speaker-names").value.trim();
    }
    return data;
  }

  // --- Items --------------------------------------------------------------------------------

  function refs(element) {
    return {
      root: element,
      name: element.querySelector(".upload-name"),
      size: element.querySelector(".upload-size"),
      badge: element.querySelector(".badge"),
      state: element.querySelector(".upload-state"),
      detail: element.querySelector(".upload-detail"),
      bar: element.querySelector(".bar"),
      error: element.querySelector(".upload-error"),
      text: element.querySelector(".upload-text"),
      link: element.querySelector(".upload-link"),
      cancel: element.querySelector(".upload-cancel")
    };
  }

  function addFiles(files) {
    Array.prototype.forEach.call(files, function (file) {
      var element = template.content.firstElementChild.cloneNode(true);
      var item = { file: file, el: refs(element), state: null, runId: null, xhr: null, cancelling: false };
      item.el.name.textContent = file.name;
      item.el.size.textContent = LL.bytes(file.size);
      item.el.cancel.addEventListener("click", function () { cancel(item); });
      items.push(item);
      list.appendChild(element);
      if (file.size > maxBytes) {
        fail(item, "The file is too large: " + LL.bytes(file.size) + ", and the limit is " + LL.bytes(maxBytes) + ".");
      } else {
        setState(item, "ready", "");
      }
    });
    section.hidden = items.length === 0;
    refreshStart();
  }

  function setState(item, state, detail) {
    item.state = state;
    item.el.root.dataset.state = state;
    LL.setBadge(item.el.badge, state);
    item.el.detail.textContent = detail || "";
    var cancel = item.el.cancel;
    var removable = state === "ready" || state === "waiting" || state === "error";
    var cancellable = state === "uploading" || state === "queued" || state === "processing";
    cancel.hidden = !(removable || cancellable);
    cancel.textContent = removable ? "Remove" : "Cancel";
    cancel.disabled = item.cancelling;
    cancel.setAttribute("aria-label", cancel.textContent + " " + item.file.name);
  }

  // A spoken summary only when the state changes, not on every percent.
  function announce(item, text) {
    if (item.el.state.textContent !== text) item.el.state.textContent = text;
  }

  // Two phases, two lanes in one bar: the upload lane fills, stays full, then the
  // transcription lane fills. Neither ever moves back, and a finished run's bar is full.
  // The progress bar's value (for assistive technology) is the current phase's.
  function showBar(item, phase, value) {
    var bar = item.el.bar;
    var p = Math.max(0, Math.min(100, Number(value) || 0));
    bar.hidden = false;
    bar.dataset.phase = phase;
    bar.setAttribute("aria-label", (phase === "upload" ? "Upload of " : "Transcription of ") + item.file.name);
    bar.setAttribute("aria-valuenow", String(Math.round(p * 10) / 10));
    bar.setAttribute("aria-valuetext", (phase === "upload" ? "uploaded " : "transcribed ") + LL.percent(p) + " %");
    var upload = bar.querySelector(".bar-lane-upload .bar-fill");
    var transcribe = bar.querySelector(".bar-lane-transcribe .bar-fill");
    item.shown = item.shown || { upload: 0, transcribe: 0 };
    if (phase === "upload") {
      item.shown.upload = Math.max(item.shown.upload, p);
    } else {
      item.shown.upload = 100;
      item.shown.transcribe = Math.max(item.shown.transcribe, p);
    }
    upload.style.width = item.shown.upload + "%";
    transcribe.style.width = item.shown.transcribe + "%";
  }

  function fail(item, message) {
    setState(item, "error", "");
    announce(item, "");
    item.el.bar.hidden = true;
    item.el.error.textContent = message;
    item.el.error.hidden = false;
  }

  function refreshStart() {
    var ready = items.filter(function (item) { return item.state === "ready"; }).length;
    startButton.disabled = ready === 0;
    startButton.textContent = ready > 1 ? "Transcribe " + ready + " files" : "Transcribe";
    startHint.textContent = ready === 0 ? "Choose at least one file." : "";
  }

  // --- Sending ------------------------------------------------------------------------------

  function start(event) {
    event.preventDefault();
    var options = currentOptions();
    items.forEach(function (item) {
      if (item.state === "ready") {
        item.options = options;
        setState(item, "waiting", "waits for the file before it");
      }
    });
    refreshStart();
    ensureStream();
    sendNext();
  }

  function sendNext() {
    if (uploading) return;
    var item = items.filter(function (i) { return i.state === "waiting"; })[0];
    if (!item) { closeStreamIfIdle(); return; }
    uploading = item;
    var data = new FormData();
    data.append("file", item.file, item.file.name);
    Object.keys(item.options).forEach(function (key) {
      if (item.options[key] !== "") data.append(key, item.options[key]);
    });
    data.append("mode", "async");

    var xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", "/api/transcribe");
    xhr.setRequestHeader("X-CSRFToken", LL.csrfToken());
    xhr.setRequestHeader("Accept", "application/json");
    setState(item, "uploading", "0 %");
    announce(item, "Uploading");
    showBar(item, "upload", 0);
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var p = 100 * e.loaded / e.total;
      showBar(item, "upload", p);
      item.el.detail.textContent = e.loaded >= e.total ? "checking the file…" : LL.percent(p) + " %";
    });
    xhr.addEventListener("load", function () {
      finishSending(item);
      var body = LL.parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300 && body && body.runId) accepted(item, body);
      else fail(item, LL.errorMessage(xhr.status, body));
    });
    xhr.addEventListener("error", function () {
      finishSending(item);
      fail(item, LL.errorMessage(0, null));
    });
    xhr.addEventListener("abort", function () {
      finishSending(item);
      fail(item, "The upload was cancelled.");
    });
    xhr.send(data);
  }

  function finishSending(item) {
    item.xhr = null;
    if (uploading === item) uploading = null;
    window.setTimeout(sendNext, 0);
  }

  // The link's accessible name begins with its visible text (WCAG 2.5.3) and names the file.
  function setLink(item, text, label) {
    var link = item.el.link.querySelector("a");
    link.textContent = text;
    link.setAttribute("aria-label", label + item.file.name);
  }

  function accepted(item, run) {
    item.runId = run.runId;
    byRun[run.runId] = item;
    var link = item.el.link.querySelector("a");
    link.href = "/runs/" + run.runId + "/";
    setLink(item, "Open the transcript", "Open the transcript of ");
    item.el.link.hidden = false;
    show(item, run);
    // Events that arrived before the answer did are newer than nothing; the last one wins.
    if (latest[run.runId]) show(item, latest[run.runId]);
    latest = {};
    closeStreamIfIdle();
  }

  // --- Following runs -----------------------------------------------------------------------

  function show(item, run) {
    if (LL.isFinished(item.state)) return; // finished is final here; the run page offers retry
    item.run = run;
    if (run.status === "queued") {
      setState(item, "queued", LL.runDetail(run));
      announce(item, "Queued");
      showBar(item, "transcribe", 0);
    } else if (run.status === "processing") {
      setState(item, "processing", item.cancelling ? "stopping at the next segment…" : LL.runDetail(run));
      announce(item, "Transcribing");
      var bar = item.el.bar;
      var shown = bar.dataset.phase === "transcribe" ? Number(bar.getAttribute("aria-valuenow")) : 0;
      showBar(item, "transcribe", Math.max(shown, run.progress || 0));
    } else if (run.status === "succeeded" && typeof run.text !== "string") {
      // The run's last `update` already says succeeded; its `done`, with the text, follows.
      showBar(item, "transcribe", 100);
      item.el.detail.textContent = "100 %";
      if (run.event === "done") refresh(item);
    } else {
      finish(item, run);
    }
  }

  function finish(item, run) {
    item.cancelling = false;
    setState(item, run.status, "");
    if (run.status === "succeeded") {
      announce(item, "Done");
      showBar(item, "transcribe", 100);
      var text = (run.text || "").trim();
      item.el.text.textContent = text || "No speech was found in this recording.";
      item.el.text.hidden = false;
      setLink(item, "Open the transcript", "Open the transcript of ");
    } else {
      item.el.bar.hidden = true;
      announce(item, run.status === "failed" ? "Failed" : "Cancelled");
      if (run.status === "failed") {
        item.el.error.textContent = (run.error && run.error.message) || "The transcription failed.";
        item.el.error.hidden = false;
      }
      setLink(item, "Details", "Details of ");
    }
    closeStreamIfIdle();
  }

  function onRunEvent(run) {
    var item = byRun[run.runId];
    if (item) show(item, run);
    else if (uploading) latest[run.runId] = run; // maybe the file being sent; its answer decides
  }

  // On (re)connect: the snapshot lists active runs. A followed run missing from it finished
  // while we were away (or started after the snapshot was taken): ask for its state.
  function onSnapshot(data) {
    var active = {};
    (data.runs || []).forEach(function (run) { active[run.runId] = true; onRunEvent(run); });
    Object.keys(byRun).forEach(function (runId) {
      var item = byRun[runId];
      if (!active[runId] && !LL.isFinished(item.state)) refresh(item);
    });
  }

  function refresh(item) {
    LL.request("GET", "/api/runs/" + item.runId).then(function (answer) {
      if (answer.ok) show(item, answer.body);
    });
  }

  function ensureStream() {
    if (events) return;
    events = LL.stream("/api/runs/events", { snapshot: onSnapshot, update: onRunEvent, done: onRunEvent });
  }

  function closeStreamIfIdle() {
    var busy = uploading || items.some(function (item) {
      return ["waiting", "uploading", "queued", "processing"].indexOf(item.state) >= 0;
    });
    if (!busy && events) { events.close(); events = null; }
  }

  // A worker started or stopped: the waiting lines say so (and promise a time, or none).
  LL.onWorkersChange(function () {
    items.forEach(function (item) {
      if (item.run && (item.state === "queued" || item.state === "processing")) show(item, item.run);
    });
  });

  // --- Cancel -------------------------------------------------------------------------------

  function cancel(item) {
    if (item.state === "ready" || item.state === "waiting" || item.state === "error") {
      items.splice(items.indexOf(item), 1);
      item.el.root.remove();
      section.hidden = items.length === 0;
      refreshStart();
      return;
    }
    if (item.state === "uploading" && item.xhr) { item.xhr.abort(); return; }
    if (!item.runId) return;
    item.cancelling = true;
    item.el.cancel.disabled = true;
    LL.request("POST", "/api/runs/" + item.runId + "/cancel").then(function (answer) {
      if (answer.ok) {
        show(item, answer.body);
      } else if (answer.status === 409) {
        item.cancelling = false;
        refresh(item); // it finished first
      } else {
        item.cancelling = false;
        item.el.cancel.disabled = false;
        item.el.error.textContent = "Could not cancel: " + LL.errorMessage(answer.status, answer.body);
        item.el.error.hidden = false;
      }
    });
  }

  // --- Choosing files -----------------------------------------------------------------------

  input.addEventListener("change", function () {
    addFiles(input.files);
    input.value = ""; // the same file can be chosen again
  });
  ["dragenter", "dragover"].forEach(function (name) {
    dropzone.addEventListener(name, function (e) {
      e.preventDefault();
      dropzone.classList.add("is-dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    dropzone.addEventListener(name, function (e) {
      e.preventDefault();
      if (name === "dragleave" && dropzone.contains(e.relatedTarget)) return;
      dropzone.classList.remove("is-dragging");
    });
  });
  dropzone.addEventListener("drop", function (e) {
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });
  // A file dropped beside the zone must not replace the page with the file.
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });
  dropzone.addEventListener("click", function (e) {
    if (e.target === dropzone || e.target.closest(".dropzone-icon, .hint, .dropzone-or")) input.click();
  });

  form.addEventListener("submit", start);
  window.addEventListener("beforeunload", function (e) {
    if (uploading || items.some(function (i) { return i.state === "waiting"; })) {
      e.preventDefault();
      e.returnValue = "";
    }
  });
})();
