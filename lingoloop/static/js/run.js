// The transcript page: status, progress and segments live from the run's event stream; the
// player plays from the segment you select and the page follows it; search, copy, downloads;
// corrections of segments; cancel, retry and delete.
//
// Transcript text reaches the page only through textContent and text nodes, never as markup.
(function () {
  "use strict";
  var root = document.getElementById("run");
  if (!root) return;
  var runId = root.dataset.runId;
  var canEdit = root.dataset.canEdit === "true";
  var audioPurged = root.dataset.audioPurged === "true";
  var badge = document.getElementById("run-badge");
  var detail = document.getElementById("run-detail");
  var bar = document.getElementById("run-bar");
  var errorBox = document.getElementById("run-error");
  var notice = document.getElementById("run-notice");
  var connection = document.getElementById("connection");
  var cancelButton = document.getElementById("run-cancel");
  var retryButton = document.getElementById("run-retry");
  var deleteButton = document.getElementById("run-delete");
  var downloads = document.getElementById("downloads");
  var tools = document.getElementById("tools");
  var list = document.getElementById("segments");
  var hint = document.getElementById("segments-hint");
  var empty = document.getElementById("segments-empty");
  var audio = document.getElementById("audio");
  var language = document.getElementById("run-language");
  var speakerFilter = document.getElementById("speaker-filter");
  // channels=separate: only the lines of the speaker chosen (all: "Everyone").
  if (speakerFilter) {
    speakerFilter.addEventListener("change", function () {
      Array.prototype.forEach.call(list.querySelectorAll("li.seg"), function (li) {
        li.hidden = speakerFilter.value !== "" && li.dataset.speaker !== speakerFilter.value;
      });
    });
  }

  var status = root.dataset.status;
  var attempts = null;      // of the attempt whose segments are shown
  var cancelling = false;
  var events = null;
  var lastEventId = root.dataset.lastEventId;
  // The page renders the progress as a number; the width follows from it here (the Content
  // Security Policy allows no inline style).
  LL.setBar(bar, bar.getAttribute("aria-valuenow"));

  function isActive() { return status === "queued" || status === "processing"; }
  function editable() { return canEdit && status === "succeeded"; }

  // LL.request with a JSON body (PATCH): the same answer shape, never rejects.
  function sendJson(method, url, body) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-CSRFToken": LL.csrfToken()
      },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.text().then(function (text) {
        return { ok: response.ok, status: response.status, body: LL.parseJson(text) };
      });
    }, function () {
      return { ok: false, status: 0, body: null };
    });
  }

  // --- Status -------------------------------------------------------------------------------

  // As the page's own label says it (web.language_label).
  var languageNames = LL.parseJson(document.getElementById("language-names").textContent) || {};
  function showLanguage(run) {
    var code = run.language || root.dataset.askedLanguage;
    if (!code) return;
    var label = languageNames[code] || code;
    if (!root.dataset.askedLanguage && run.languageProbability != null) {
      label += " (detected, " + Math.round(run.languageProbability * 100) + " % sure)";
    }
    language.querySelector("span").textContent = label;
    language.hidden = false;
  }

  function render(run) {
    showLanguage(run);
    status = run.status;
    root.dataset.status = status;
    LL.setBadge(badge, status);
    var active = isActive();
    if (status === "processing" && cancelling) detail.textContent = "Stopping at the next segment…";
    else if (status === "succeeded") detail.textContent = run.timeElapsed != null ? "Transcribed in " + LL.clock(run.timeElapsed) : "";
    else if (status === "failed") detail.textContent = "";
    else detail.textContent = LL.runDetail(run);

    // Two phases on one bar, and it only ever fills: a new attempt starts from nothing, and
    // a run that is done is full.
    bar.hidden = !(active || status === "succeeded");
    bar.classList.toggle("is-done", status === "succeeded");
    if (status === "succeeded") {
      LL.setBar(bar, 100);
    } else if (active) {
      var shown = Number(bar.getAttribute("aria-valuenow")) || 0;
      LL.setBar(bar, status === "queued" ? 0 : Math.max(run.attempts === attempts ? shown : 0, run.progress || 0));
    }
    if (attempts !== null && run.attempts > attempts && status === "processing") clearSegments();
    if (status === "processing" || attempts === null) attempts = run.attempts;

    cancelButton.hidden = !active;
    cancelButton.disabled = cancelling;
    retryButton.hidden = !(status === "failed" || status === "cancelled") || audioPurged;
    deleteButton.hidden = active;
    downloads.hidden = status !== "succeeded";
    errorBox.hidden = status !== "failed";
    if (status === "failed") errorBox.textContent = (run.error && run.error.message) || "The transcription failed.";
    if (!active) { cancelling = false; notice.hidden = true; }
    // New lines are announced while they arrive; after that, search highlights and
    // corrections must not be read out as additions.
    if (active) { list.setAttribute("aria-live", "polite"); list.setAttribute("aria-relevant", "additions"); }
    else { list.removeAttribute("aria-live"); list.removeAttribute("aria-relevant"); }
    if (list.children.length) {
      hint.textContent = "Select a line to play the audio from there" + (editable() ? "; Edit corrects its text." : ".");
    }
    if (status === "succeeded" && !list.children.length) {
      empty.textContent = "No speech was found in this recording.";
    } else if (!active && status !== "succeeded") {
      empty.textContent = "There is no transcript.";
    }
  }

  // --- Segments -----------------------------------------------------------------------------

  function segmentElement(segment) {
    var li = document.createElement("li");
    li.className = "seg";
    li.dataset.id = segment.id;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "segment";
    button.dataset.id = segment.id;
    button.dataset.start = segment.start;
    button.dataset.end = segment.end;
    if (segment.edited) button.dataset.original = String(segment.originalText || "").trim();
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
    if (segment.speaker) {
      li.dataset.speaker = segment.speaker;
      var speaker = document.createElement("span");
      speaker.className = "speaker speaker-" + (Number(segment.channel) || 0) % 8;
      speaker.textContent = segment.speaker;
      var colon = document.createElement("span");
      colon.className = "visually-hidden";
      colon.textContent = ":";
      speaker.appendChild(colon);
      button.appendChild(speaker);
      button.appendChild(document.createTextNode(" "));
      li.hidden = speakerFilter !== null && speakerFilter.value !== "" && speakerFilter.value !== segment.speaker;
    }
    button.appendChild(text);
    li.appendChild(button);
    decorate(li);
    return li;
  }

  function segmentButton(li) { return li.querySelector(".segment"); }
  function segmentLabel(li) { return LL.clock(Number(segmentButton(li).dataset.start) * 1000); }

  // The controls beside a line: its "edited" marker (which shows the model's text) and its
  // Edit button, for the owner of a succeeded run.
  function decorate(li) {
    var old = li.querySelector(".seg-side");
    if (old) li.removeChild(old);
    var original = li.querySelector(".seg-original");
    if (original) li.removeChild(original);
    var button = segmentButton(li);
    var edited = button.dataset.original !== undefined;
    if (!edited && !editable()) return;
    var side = document.createElement("span");
    side.className = "seg-side";
    if (edited) {
      var mark = document.createElement("button");
      mark.type = "button";
      mark.className = "edited-mark";
      mark.textContent = "edited";
      mark.setAttribute("aria-expanded", "false");
      mark.setAttribute("aria-label", "Edited: show the model's text of the line at " + segmentLabel(li));
      side.appendChild(mark);
    }
    if (editable()) {
      var edit = document.createElement("button");
      edit.type = "button";
      edit.className = "seg-edit";
      edit.textContent = "Edit";
      edit.setAttribute("aria-label", "Edit the line at " + segmentLabel(li));
      side.appendChild(edit);
    }
    li.insertBefore(side, button.nextSibling);
  }

  function showOriginal(li, mark) {
    var open = li.querySelector(".seg-original");
    if (open) {
      li.removeChild(open);
      mark.setAttribute("aria-expanded", "false");
      return;
    }
    var box = document.createElement("p");
    box.className = "seg-original";
    box.id = "original-" + li.dataset.id;
    box.appendChild(document.createTextNode("The model’s text: "));
    var quote = document.createElement("q");
    quote.textContent = segmentButton(li).dataset.original;
    box.appendChild(quote);
    if (editable()) {
      var restore = document.createElement("button");
      restore.type = "button";
      restore.className = "btn btn-small btn-ghost seg-restore";
      restore.textContent = "Restore";
      restore.setAttribute("aria-label", "Restore the model's text of the line at " + segmentLabel(li));
      box.appendChild(restore);
    }
    li.appendChild(box);
    mark.setAttribute("aria-controls", box.id);
    mark.setAttribute("aria-expanded", "true");
  }

  // Segments are keyed by id: one delivered twice (a replay after a reconnect) replaces itself.
  function addSegments(segments) {
    (segments || []).forEach(function (segment) {
      var element = segmentElement(segment);
      var existing = list.querySelector('li.seg[data-id="' + Number(segment.id) + '"]');
      if (existing) list.replaceChild(element, existing);
      else list.appendChild(element);
      if (search.query) search.highlight(element);
    });
    var any = list.children.length > 0;
    empty.hidden = any;
    hint.hidden = !any || !audio;
    tools.hidden = !any;
    if (search.query && segments && segments.length) search.recount();
  }

  function clearSegments() {
    closeEditor();
    list.textContent = "";
    empty.hidden = false;
    empty.textContent = "The transcript appears here, line by line, as it is produced.";
    hint.hidden = true;
    tools.hidden = true;
    search.recount();
  }

  // The finished run's segments are the reference: what the stream showed is replaced by them.
  function loadFinal() {
    LL.request("GET", "/api/runs/" + runId).then(function (answer) {
      if (!answer.ok || answer.body.status !== "succeeded") return;
      render(answer.body);
      list.textContent = "";
      addSegments(answer.body.segments);
      updateOriginalChoice();
    });
  }

  // --- Search -------------------------------------------------------------------------------

  var search = (function () {
    var input = document.getElementById("search");
    var count = document.getElementById("search-count");
    var prev = document.getElementById("search-prev");
    var next = document.getElementById("search-next");
    var state = { query: "", active: -1 };

    // The query as a literal: every character that means something to a RegExp is escaped,
    // so "(", "*" or "\\" are searched for as themselves.
    function pattern(query) {
      return new RegExp(query.replace(/[\\^$.*+?()[\]{}|\/]/g, "\\$&"), "giu");
    }

    function unhighlight(li) {
      var text = li.querySelector(".seg-text");
      if (text && text.querySelector("mark")) text.textContent = text.textContent;
    }

    // The line's text split into text nodes and <mark>s around each match.
    function highlight(li) {
      var text = li.querySelector(".seg-text");
      if (!text) return;
      var value = text.textContent;
      unhighlight(li);
      if (!state.query) return;
      var re = pattern(state.query);
      var parts = document.createDocumentFragment();
      var at = 0, found = false, match;
      while ((match = re.exec(value)) !== null) {
        if (!match[0].length) { re.lastIndex += 1; continue; }
        found = true;
        parts.appendChild(document.createTextNode(value.slice(at, match.index)));
        var mark = document.createElement("mark");
        mark.className = "hit";
        mark.textContent = match[0];
        parts.appendChild(mark);
        at = match.index + match[0].length;
      }
      if (!found) return;
      parts.appendChild(document.createTextNode(value.slice(at)));
      text.textContent = "";
      text.appendChild(parts);
    }

    function hits() { return list.querySelectorAll("mark.hit"); }

    function show(scroll) {
      var all = hits();
      Array.prototype.forEach.call(all, function (mark, i) {
        mark.classList.toggle("is-active", i === state.active);
      });
      prev.disabled = next.disabled = all.length === 0;
      if (!state.query) count.textContent = "";
      else if (!all.length) count.textContent = "No matches";
      else count.textContent = (state.active + 1) + " of " + all.length;
      if (scroll && all[state.active]) {
        all[state.active].scrollIntoView({ block: "center", behavior: smooth() });
      }
    }

    function run(query) {
      state.query = query;
      Array.prototype.forEach.call(list.children, highlight);
      state.active = hits().length ? 0 : -1;
      show(true);
    }

    function step(by) {
      var n = hits().length;
      if (!n) return;
      state.active = (state.active + by + n) % n;
      show(true);
    }

    function recount() {
      var n = hits().length;
      if (state.active >= n) state.active = n - 1;
      if (state.active < 0 && n) state.active = 0;
      show(false);
    }

    input.addEventListener("input", function () { run(input.value); });
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        event.preventDefault();
        if (input.value !== state.query) run(input.value);
        else step(event.shiftKey ? -1 : 1);
      } else if (event.key === "Escape") {
        event.preventDefault();
        input.value = "";
        run("");
      }
    });
    prev.addEventListener("click", function () { step(-1); });
    next.addEventListener("click", function () { step(1); });

    return {
      get query() { return state.query; },
      highlight: highlight,
      unhighlight: unhighlight,
      recount: recount
    };
  })();

  function smooth() {
    return window.matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth";
  }

  // --- Copy the whole text ------------------------------------------------------------------

  var copyButton = document.getElementById("copy-text");
  var copyStatus = document.getElementById("copy-status");
  var copyTimer = null;

  function transcriptText() {
    return Array.prototype.map.call(list.querySelectorAll(".seg-text"), function (text) {
      return text.textContent.trim();
    }).filter(Boolean).join(" ");
  }

  function copied(message, failed) {
    copyStatus.textContent = message;
    copyStatus.classList.toggle("is-error", !!failed);
    if (copyTimer) window.clearTimeout(copyTimer);
    copyTimer = window.setTimeout(function () { copyStatus.textContent = ""; }, failed ? 10000 : 4000);
  }

  // Without the Clipboard API (an insecure origin, an older browser) or when it refuses:
  // a hidden text box, selected and copied the old way.
  function copyTheOldWay(text) {
    var box = document.createElement("textarea");
    box.value = text;
    box.setAttribute("readonly", "");
    box.className = "visually-hidden";
    document.body.appendChild(box);
    box.select();
    var done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    document.body.removeChild(box);
    copyButton.focus();
    return done;
  }

  copyButton.addEventListener("click", function () {
    var text = transcriptText();
    var words = text ? text.split(/\s+/).length : 0;
    var ok = function () { copied("Copied " + words + (words === 1 ? " word" : " words")); };
    var fallback = function () {
      if (copyTheOldWay(text)) ok();
      else copied("Copying is blocked here: download the txt file instead.", true);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(ok, fallback);
    } else {
      fallback();
    }
  });

  // --- Downloads ----------------------------------------------------------------------------

  var originalChoice = document.getElementById("original-choice");
  var originalBox = document.getElementById("download-original");

  function updateOriginalChoice() {
    var anyEdited = !!list.querySelector(".segment[data-original]");
    originalChoice.hidden = !anyEdited;
    if (!anyEdited) originalBox.checked = false;
    Array.prototype.forEach.call(downloads.querySelectorAll("a[data-href]"), function (link) {
      link.href = link.dataset.href + (originalBox.checked ? "&version=original" : "");
    });
  }
  originalBox.addEventListener("change", updateOriginalChoice);

  // --- Corrections --------------------------------------------------------------------------

  var editor = null; // {li, form}
  var editorCount = 0;

  function openEditor(li) {
    if (editor && editor.li === li) { editor.form.querySelector("textarea").focus(); return; }
    closeEditor();
    var form = document.getElementById("editor-template").content.firstElementChild.cloneNode(true);
    var button = segmentButton(li);
    var textarea = form.querySelector("textarea");
    var label = form.querySelector("label");
    editorCount += 1;
    textarea.id = "seg-editor-" + editorCount;
    label.htmlFor = textarea.id;
    label.textContent = "Text of the line at " + segmentLabel(li);
    search.unhighlight(li);
    textarea.value = button.querySelector(".seg-text").textContent;
    var edited = button.dataset.original !== undefined;
    var original = form.querySelector(".seg-editor-original");
    original.hidden = !edited;
    if (edited) original.querySelector("q").textContent = button.dataset.original;
    form.querySelector('[data-action="restore"]').hidden = !edited;
    var open = li.querySelector(".seg-original");
    if (open) li.removeChild(open);
    li.appendChild(form);
    li.classList.add("is-editing");
    editor = { li: li, form: form };

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      save(li, form, "PATCH", { text: textarea.value });
    });
    form.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        event.preventDefault();
        closeEditor(true);
      } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        save(li, form, "PATCH", { text: textarea.value });
      }
    });
    form.querySelector('[data-action="cancel"]').addEventListener("click", function () { closeEditor(true); });
    form.querySelector('[data-action="restore"]').addEventListener("click", function () {
      save(li, form, "DELETE", null);
    });
    textarea.focus();
    textarea.setSelectionRange(textarea.value.length, textarea.value.length);
  }

  // `refocus`: back to the line's Edit button, where the keyboard user left off.
  function closeEditor(refocus) {
    if (!editor) return;
    var li = editor.li;
    if (editor.form.parentNode) editor.form.parentNode.removeChild(editor.form);
    li.classList.remove("is-editing");
    editor = null;
    if (search.query) { search.highlight(li); search.recount(); }
    if (refocus) {
      var edit = li.querySelector(".seg-edit");
      if (edit) edit.focus();
    }
  }

  function save(li, form, method, body) {
    var buttons = form.querySelectorAll("button");
    var error = form.querySelector(".alert");
    Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
    error.hidden = true;
    var url = "/api/runs/" + runId + "/segments/" + Number(li.dataset.id);
    var request = method === "PATCH" ? sendJson(method, url, body) : LL.request(method, url);
    request.then(function (answer) {
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      if (!answer.ok) {
        error.textContent = "Not saved: " + LL.errorMessage(answer.status, answer.body);
        error.hidden = false;
        form.querySelector("textarea").focus();
        return;
      }
      closeEditor(false);
      applySegment(li, answer.body);
      var edit = li.querySelector(".seg-edit");
      if (edit) edit.focus();
    });
  }

  // The line as the server now has it (a PATCH or DELETE answer).
  function applySegment(li, segment) {
    var button = segmentButton(li);
    button.querySelector(".seg-text").textContent = String(segment.text || "").trim();
    if (segment.edited) button.dataset.original = String(segment.originalText || "").trim();
    else delete button.dataset.original;
    decorate(li);
    if (search.query) { search.highlight(li); search.recount(); }
    updateOriginalChoice();
  }

  function restore(li) {
    var url = "/api/runs/" + runId + "/segments/" + Number(li.dataset.id);
    LL.request("DELETE", url).then(function (answer) {
      if (!answer.ok) {
        notice.textContent = "Could not restore the line: " + LL.errorMessage(answer.status, answer.body);
        notice.hidden = false;
        return;
      }
      applySegment(li, answer.body);
      var edit = li.querySelector(".seg-edit");
      if (edit) edit.focus();
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

  // --- Cancel, retry and delete -------------------------------------------------------------

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
      if (!cancelButton.hidden) cancelButton.focus(); // the Retry button is gone
      follow(); // from the last event seen: nothing the retry started is missed
    });
  });

  var dialog = document.getElementById("delete-dialog");
  var deleteError = document.getElementById("delete-error");
  var deleteConfirm = document.getElementById("delete-confirm");

  deleteButton.addEventListener("click", function () {
    deleteError.hidden = true;
    deleteConfirm.disabled = false;
    dialog.showModal();
    document.getElementById("delete-keep").focus(); // the safe choice first
  });
  document.getElementById("delete-keep").addEventListener("click", function () { dialog.close(); });
  dialog.addEventListener("close", function () { deleteButton.focus(); });
  deleteConfirm.addEventListener("click", function () {
    deleteConfirm.disabled = true;
    LL.request("DELETE", "/api/runs/" + runId).then(function (answer) {
      if (answer.ok || answer.status === 404) { // 404: deleted already, elsewhere
        window.location.assign(root.dataset.runsUrl);
        return;
      }
      deleteConfirm.disabled = false;
      deleteError.textContent = "Not deleted: " + LL.errorMessage(answer.status, answer.body);
      deleteError.hidden = false;
    });
  });

  // --- The transcript's buttons -------------------------------------------------------------

  list.addEventListener("click", function (event) {
    var li = event.target.closest("li.seg");
    if (!li) return;
    if (event.target.closest(".seg-edit")) { openEditor(li); return; }
    var mark = event.target.closest(".edited-mark");
    if (mark) { showOriginal(li, mark); return; }
    if (event.target.closest(".seg-restore")) { restore(li); return; }
    var segment = event.target.closest(".segment");
    if (!segment || !audio) return;
    audio.currentTime = Number(segment.dataset.start) || 0;
    var playing = audio.play();
    if (playing && playing.catch) playing.catch(function () { /* the user can press play */ });
  });

  // --- Following the player -----------------------------------------------------------------

  var followBox = document.getElementById("follow");

  if (audio) {
    var current = null;

    // Keep the line being played in view, unless it already is, comfortably.
    var keepInView = function (segment) {
      if (!followBox || !followBox.checked) return;
      var box = segment.getBoundingClientRect();
      var margin = Math.min(120, window.innerHeight / 5);
      if (box.top >= margin && box.bottom <= window.innerHeight - margin) return;
      segment.scrollIntoView({ block: "center", behavior: smooth() });
    };

    audio.addEventListener("timeupdate", function () {
      var t = audio.currentTime;
      if (current && current.isConnected && t >= Number(current.dataset.start) && t < Number(current.dataset.end)) return;
      if (current) { current.classList.remove("is-current"); current.removeAttribute("aria-current"); }
      current = null;
      Array.prototype.some.call(list.querySelectorAll(".segment"), function (segment) {
        if (t >= Number(segment.dataset.start) && t < Number(segment.dataset.end)) {
          current = segment;
          segment.classList.add("is-current");
          segment.setAttribute("aria-current", "true");
          if (!audio.paused) keepInView(segment);
          return true;
        }
        return false;
      });
    });

    // Scrolling away by hand while it plays: the reader wants to look elsewhere.
    var scrolledByHand = function () {
      if (followBox && followBox.checked && !audio.paused) followBox.checked = false;
    };
    window.addEventListener("wheel", scrolledByHand, { passive: true });
    window.addEventListener("touchmove", scrolledByHand, { passive: true });
    if (followBox) {
      followBox.addEventListener("change", function () {
        if (followBox.checked && current) keepInView(current);
      });
    }

    audio.addEventListener("error", function () {
      var player = audio.parentNode;
      var message = document.createElement("p");
      message.className = "muted";
      message.textContent = "The audio cannot be played here. The transcript is below.";
      player.replaceChild(message, audio);
      audio = null;
      hint.hidden = true;
      if (followBox) followBox.parentNode.hidden = true;
    });
  }

  var initial = LL.parseJson(document.getElementById("run-data").textContent);
  if (initial) render(initial);
  Array.prototype.forEach.call(list.children, decorate);
  addSegments([]);
  updateOriginalChoice();
  if (isActive()) follow();
})();
