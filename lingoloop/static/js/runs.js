// The runs page: rows change as their runs move (GET /api/runs/events), without a reload.
(function () {
  "use strict";
  var table = document.getElementById("runs");
  if (!table) return;
  var body = table.tBodies[0];
  var emptyRow = body.querySelector(".empty-row");
  var showOwner = table.dataset.showOwner === "1";
  var addNewRows = table.dataset.live === "new"; // only the first page takes new runs
  var connection = document.getElementById("connection");

  function rowFor(runId) {
    return body.querySelector('tr[data-run-id="' + runId + '"]');
  }

  function cell(label, className) {
    var td = document.createElement("td");
    td.dataset.label = label;
    if (className) td.className = className;
    return td;
  }

  function newRow(run) {
    var tr = document.createElement("tr");
    tr.dataset.runId = run.runId;

    var file = cell("File", "cell-file");
    var link = document.createElement("a");
    link.href = "/runs/" + run.runId + "/";
    link.textContent = (run.audio && run.audio.filename) || "audio";
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

    body.insertBefore(tr, body.firstChild);
    emptyRow.hidden = true;
    return tr;
  }

  function render(run) {
    var tr = rowFor(run.runId);
    if (!tr) {
      if (!addNewRows) return;
      tr = newRow(run);
    }
    tr.dataset.version = String(Number(tr.dataset.version || 0) + 1);
    tr.dataset.status = run.status;
    LL.setBadge(tr.querySelector(".badge"), run.status);
    tr.querySelector(".run-detail").textContent = LL.runDetail(run);
    lastSeen[run.runId] = run;
  }

  // A worker started or stopped: the waiting rows say so (and promise a time, or none).
  var lastSeen = {};
  LL.onWorkersChange(function () {
    Object.keys(lastSeen).forEach(function (runId) {
      var tr = rowFor(runId);
      if (tr && !LL.isFinished(tr.dataset.status)) tr.querySelector(".run-detail").textContent = LL.runDetail(lastSeen[runId]);
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

  LL.stream("/api/runs/events", { snapshot: onSnapshot, update: render, done: render }, {
    lastEventId: table.dataset.lastEventId,
    onState: function (state) {
      connection.hidden = state === "live";
      connection.textContent = state === "live" ? "" : "Connection lost; reconnecting…";
    }
  });
})();
