// The runs page: rows change as their runs move (GET /api/runs/events), without a reload.
// New runs are added on the first page when they match the page's filter; retry and cancel go
// through the API, delete asks for a confirmation first. Without this script every button
// still works, as a form (transcription/web.py).
(function () {
  "use strict";
  var table = document.getElementById("runs");
  if (!table) return;
  var form = document.getElementById("runs-form");
  var body = table.tBodies[0];
  var emptyRow = body.querySelector(".empty-row");
  var showOwner = table.dataset.showOwner === "1";
  var addNewRows = table.dataset.live === "new"; // only the first page takes new runs
  var filterStatus = table.dataset.filterStatus || "";
  var filterWords = (table.dataset.filterQ || "").toLowerCase().split(/\s+/).filter(Boolean);
  var connection = document.getElementById("connection");
  var lastSeen = {}; // runId -> the last state seen of it

  function rowFor(runId) {
    return body.querySelector('tr[data-run-id="' + runId + '"]');
  }

  // What the server's filter (transcription/queries.py) would say of a run not on the page.
  function matchesFilter(run) {
    if (filterStatus && run.status !== filterStatus) return false;
    var name = ((run.audio && run.audio.filename) || "").toLowerCase();
    var text = (typeof run.text === "string" ? run.text : "").toLowerCase();
    return filterWords.every(function (word) {
      return name.indexOf(word) >= 0 || text.indexOf(word) >= 0;
    });
  }

  function cell(label, className) {
    var td = document.createElement("td");
    td.dataset.label = label;
    if (className) td.className = className;
    return td;
  }

  function button(className, label, name, extra) {
    var b = document.createElement("button");
    b.type = "submit";
    b.className = "btn btn-small " + className;
    b.textContent = label;
    b.setAttribute("aria-label", label + " " + name);
    Object.keys(extra).forEach(function (key) { b.setAttribute(key, extra[key]); });
    return b;
  }

  // A run that appeared while the page was open: the events reach only its owner's pages
  // (and staff's), so for someone who is not staff it is theirs.
  function newRow(run) {
    var tr = document.createElement("tr");
    var name = (run.audio && run.audio.filename) || "audio";
    var mine = !showOwner;
    tr.dataset.runId = run.runId;
    tr.dataset.mine = mine ? "1" : "0";

    var select = cell("Select", "cell-select");
    if (mine) {
      var box = document.createElement("input");
      box.type = "checkbox";
      box.name = "ids";
      box.value = run.runId;
      box.setAttribute("aria-label", "Select " + name);
      select.appendChild(box);
    }
    tr.appendChild(select);

    var file = cell("File", "cell-file");
    var link = document.createElement("a");
    link.href = "/runs/" + run.runId + "/";
    link.textContent = name;
    file.appendChild(link);
    tr.appendChild(file);

    if (showOwner) tr.appendChild(cell("Owner"));

    var status = cell("Status", "cell-status");
    var badge = document.createElement("span");
    badge.className = "badge";
    var detail = document.createElement("span");
    detail.className = "run-detail muted";
    status.appendChild(badge);
    status.appendChild(document.createTextNode(" "));
    status.appendChild(detail);
    tr.appendChild(status);

    var duration = cell("Duration", "num cell-duration");
    duration.textContent = LL.clock(run.audio && run.audio.durationMs);
    tr.appendChild(duration);

    var created = cell("Created", "cell-created");
    var time = document.createElement("time");
    time.setAttribute("datetime", new Date().toISOString());
    LL.localTime(time);
    created.appendChild(time);
    tr.appendChild(created);

    var actions = cell("Actions", "cell-actions");
    if (mine) {
      var base = "/runs/" + run.runId + "/";
      actions.appendChild(button("btn-secondary run-retry", "Retry", name, { formaction: base + "retry" }));
      actions.appendChild(document.createTextNode(" "));
      actions.appendChild(button("btn-secondary run-cancel", "Cancel", name, { formaction: base + "cancel" }));
      actions.appendChild(document.createTextNode(" "));
      actions.appendChild(button("btn-danger run-delete", "Delete", name, { name: "one", value: run.runId, "data-confirm": "one" }));
    }
    tr.appendChild(actions);

    body.insertBefore(tr, body.firstChild);
    emptyRow.hidden = true;
    return tr;
  }

  function showActions(tr, status) {
    var finished = LL.isFinished(status);
    var toggle = function (selector, shown) {
      var b = tr.querySelector(selector);
      if (b) b.hidden = !shown;
    };
    toggle(".run-retry", status === "failed" || status === "cancelled");
    toggle(".run-cancel", !finished);
    toggle(".run-delete", finished);
  }

  function render(run) {
    var tr = rowFor(run.runId);
    if (!tr) {
      if (!addNewRows || !matchesFilter(run)) return;
      tr = newRow(run);
    }
    tr.dataset.version = String(Number(tr.dataset.version || 0) + 1);
    tr.dataset.status = run.status;
    LL.setBadge(tr.querySelector(".badge"), run.status);
    tr.querySelector(".run-detail").textContent = LL.runDetail(run);
    showActions(tr, run.status);
    lastSeen[run.runId] = run;
  }

  // A worker started or stopped: the waiting rows say so (and promise a time, or none).
  LL.onWorkersChange(function () {
    Object.keys(lastSeen).forEach(function (runId) {
      var tr = rowFor(runId);
      if (tr && !LL.isFinished(tr.dataset.status)) {
        tr.querySelector(".run-detail").textContent = LL.runDetail(lastSeen[runId]);
      }
    });
  });

  // Rows the snapshot calls active are live; an active row it leaves out finished while the
  // page was not listening: ask for its state, unless an event tells it first.
  function onSnapshot(data) {
    var active = {};
    (data.runs || []).forEach(function (run) { active[run.runId] = true; render(run); });
    Array.prototype.forEach.call(body.querySelectorAll("tr[data-run-id]"), function (tr) {
      var status = tr.dataset.status;
      if (active[tr.dataset.runId] || LL.isFinished(status)) return;
      var version = tr.dataset.version;
      LL.request("GET", "/api/runs/" + tr.dataset.runId).then(function (answer) {
        if (answer.ok && tr.dataset.version === version) render(answer.body);
      });
    });
  }

  // --- Buttons ------------------------------------------------------------------------------

  function say(text) {
    connection.hidden = !text;
    connection.textContent = text;
  }

  function fileName(tr) {
    return tr.querySelector(".cell-file a").textContent;
  }

  form.addEventListener("submit", function (event) {
    var submitter = event.submitter;
    if (!submitter) return;
    var tr = submitter.closest("tr[data-run-id]");
    if (tr && (submitter.classList.contains("run-retry") || submitter.classList.contains("run-cancel"))) {
      event.preventDefault();
      var action = submitter.classList.contains("run-retry") ? "retry" : "cancel";
      submitter.disabled = true;
      LL.request("POST", "/api/runs/" + tr.dataset.runId + "/" + action).then(function (answer) {
        submitter.disabled = false;
        if (answer.ok) { say(""); render(answer.body); }
        else say("Could not " + action + " " + fileName(tr) + ": " + LL.errorMessage(answer.status, answer.body));
      });
      return;
    }
    if (submitter.dataset.confirm) {
      var names;
      if (submitter.dataset.confirm === "one") {
        names = [fileName(tr)];
      } else {
        names = Array.prototype.map.call(body.querySelectorAll("input[name=ids]:checked"), function (box) {
          return fileName(box.closest("tr"));
        });
        if (!names.length) {
          event.preventDefault();
          say("Tick the runs to delete first.");
          return;
        }
      }
      var question = names.length === 1
        ? "Delete " + names[0] + "? Its transcript is deleted and cannot be recovered."
        : "Delete these " + names.length + " runs? Their transcripts are deleted and cannot be recovered.";
      if (!window.confirm(question)) { event.preventDefault(); return; }
      var confirmed = document.createElement("input");
      confirmed.type = "hidden";
      confirmed.name = "confirmed";
      confirmed.value = "1";
      form.appendChild(confirmed);
    }
  });

  LL.stream("/api/runs/events", { snapshot: onSnapshot, update: render, done: render }, {
    lastEventId: table.dataset.lastEventId,
    onState: function (state) {
      if (state === "live") { if (connection.textContent.indexOf("Connection") === 0) say(""); }
      else say("Connection lost; reconnecting…");
    }
  });
})();
