// Small helpers shared by the pages: API calls with the session, formatting, event streams.
(function () {
  "use strict";
  // base.html loads this file on every page; a page that names it again gets the same LL.
  if (window.LL) return;

  var STATUS_LABELS = {
    ready: "Ready",
    waiting: "Waiting",
    uploading: "Uploading",
    queued: "Queued",
    processing: "Transcribing",
    succeeded: "Done",
    failed: "Failed",
    cancelled: "Cancelled",
    error: "Not uploaded"
  };

  function csrfToken() {
    var meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.content : "";
  }

  function parseJson(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  // The API's error shape is {"error": {"code", "message", "field"}}: show its message, or a
  // plain sentence for answers that did not come from the API (a proxy, a dropped network).
  // From a page, 401 and 403 mean the session ended (its CSRF token goes with it).
  function errorMessage(status, body) {
    if (status === 401 || status === 403) return "Your session has ended. Reload the page and log in again.";
    if (body && body.error && body.error.message) return body.error.message;
    switch (status) {
      case 0: return "The connection to the server was lost. Check your network and try again.";
      case 404: return "Not found: it may have been deleted.";
      case 413: return "The file is too large to upload.";
      case 415: return "This file is not audio that LingoLoop can read.";
      case 422: return "The audio is too long.";
      case 429: return "Too many requests right now. Wait a moment and try again.";
      case 503: return "The service cannot answer just now. Try again shortly.";
      case 507: return "The server has no room to store this upload just now. Try again later.";
      default: return "Something went wrong on the server (HTTP " + status + "). Try again later.";
    }
  }

  // A same-origin request with the session cookie and the CSRF header; resolves to
  // {status, body} and never rejects, so callers show every failure the same way.
  function request(method, url) {
    return fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "X-CSRFToken": csrfToken() }
    }).then(function (response) {
      return response.text().then(function (text) {
        return { ok: response.ok, status: response.status, body: parseJson(text) };
      });
    }, function () {
      return { ok: false, status: 0, body: null };
    });
  }

  function clock(ms) {
    if (ms == null || isNaN(ms)) return "";
    var total = Math.max(0, Math.floor(ms / 1000));
    var h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    var pad = function (n) { return (n < 10 ? "0" : "") + n; };
    return h ? h + ":" + pad(m) + ":" + pad(s) : m + ":" + pad(s);
  }

  function bytes(n) {
    if (n == null) return "";
    var units = ["bytes", "KB", "MB", "GB"];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + " " + units[i];
  }

  function roughly(seconds) {
    if (seconds < 5) return "a few seconds";
    if (seconds < 90) return "about " + Math.round(seconds) + " s";
    if (seconds < 5400) return "about " + Math.round(seconds / 60) + " min";
    return "about " + (seconds / 3600).toFixed(1) + " h";
  }

  function eta(seconds) {
    if (seconds == null) return "";
    return seconds < 5 ? "almost done" : roughly(seconds) + " left";
  }

  function ordinal(n) {
    var tens = n % 100, ones = n % 10;
    if (tens >= 11 && tens <= 13) return n + "th";
    return n + (ones === 1 ? "st" : ones === 2 ? "nd" : ones === 3 ? "rd" : "th");
  }

  function percent(value) {
    var p = Math.max(0, Math.min(100, Number(value) || 0));
    return p === 100 || p === 0 ? String(p) : p.toFixed(p < 10 ? 1 : 0);
  }

  function isFinished(status) {
    return status === "succeeded" || status === "failed" || status === "cancelled";
  }

  // --- Live workers ---------------------------------------------------------------------------
  // /api/health says how many worker clusters are alive (one cheap query). Asked when a page
  // opens and every WORKER_POLL_MS while it is visible: the banner in base.html appears when
  // none is, and goes away when one starts, without a reload. While none is alive no page
  // promises a time (runDetail), since nothing can pick the job up.
  var WORKER_POLL_MS = 10000;
  var workers = null; // null: not known yet (or the server could not say)
  var workerListeners = [];

  function workersAlive() { return workers; }

  function onWorkersChange(listener) { workerListeners.push(listener); }

  function setWorkers(alive) {
    if (alive === workers) return;
    workers = alive;
    var banner = document.getElementById("worker-banner");
    if (banner) banner.hidden = workers !== 0;
    workerListeners.forEach(function (listener) { listener(workers); });
  }

  function checkWorkers() {
    if (document.hidden) return;
    request("GET", "/api/health").then(function (answer) {
      var alive = answer.body ? answer.body.workersAlive : null;
      setWorkers(typeof alive === "number" ? alive : null);
    });
  }

  // A run being transcribed means a worker is back: ask now rather than at the next poll
  // (at most every 2 s), so the banner does not contradict the progress beside it.
  var lastRecheck = 0;
  function noticeRun(run) {
    if (workers !== 0 || !run || run.status !== "processing") return;
    var now = Date.now();
    if (now - lastRecheck < 2000) return;
    lastRecheck = now;
    checkWorkers();
  }

  function watchWorkers() {
    if (!document.getElementById("worker-banner")) return;
    checkWorkers();
    window.setInterval(checkWorkers, WORKER_POLL_MS);
    document.addEventListener("visibilitychange", checkWorkers);
  }

  // "Queued · 2nd in line", "45 % · about 12 s left": the line under a run's name.
  function runDetail(run) {
    if (run.status === "queued") {
      var waitingForRetry = run.attempts > 0 && run.jobs && run.jobs.length &&
        run.jobs[run.jobs.length - 1].lastError;
      var parts = [run.queuePosition > 0 ? ordinal(run.queuePosition) + " in line" : "waiting for a worker"];
      if (waitingForRetry) parts.unshift("An attempt failed; it will be tried again");
      if (workers === 0) {
        parts.push("no worker is running");
        return parts.join(" · ");
      }
      // For a queued run the estimate covers the wait and its own transcription.
      if (run.estimatedTimeRemaining != null) parts.push("done in " + roughly(run.estimatedTimeRemaining));
      return parts.join(" · ");
    }
    if (run.status === "processing") {
      var parts = [percent(run.progress) + " %"];
      if (workers === 0) parts.push("no worker is running");
      else if (run.estimatedTimeRemaining != null) parts.push(eta(run.estimatedTimeRemaining));
      else if (!run.progress) parts.push("starting");
      return parts.join(" · ");
    }
    if (run.status === "failed") return run.error && run.error.message ? run.error.message : "";
    return "";
  }

  function setBar(bar, value) {
    var p = Math.max(0, Math.min(100, Number(value) || 0));
    bar.setAttribute("aria-valuenow", String(Math.round(p * 10) / 10));
    bar.setAttribute("aria-valuetext", percent(p) + " %");
    bar.firstElementChild.style.width = p + "%";
  }

  function setBadge(badge, status) {
    badge.className = "badge badge-" + status;
    badge.textContent = STATUS_LABELS[status] || status;
  }

  // An EventSource that survives the connection dropping. The browser reconnects by itself
  // and sends Last-Event-ID; when it gives up (the server answered an error, say during a
  // restart) a new one is opened from the last id seen. `handlers` maps event names to
  // functions of the parsed data. The stream's own `error` event (a failed attempt) and the
  // browser's connection `error` share a name: only the first carries data.
  function stream(url, handlers, options) {
    options = options || {};
    var lastId = options.lastEventId != null && options.lastEventId !== "" ? String(options.lastEventId) : null;
    var source = null;
    var closed = false;
    var retryTimer = null;
    var retryDelay = 3000;
    var onState = options.onState || function () {};

    function urlWithLastId() {
      if (lastId == null) return url;
      return url + (url.indexOf("?") < 0 ? "?" : "&") + "lastEventId=" + encodeURIComponent(lastId);
    }

    function deliver(name, event) {
      if (event.lastEventId) lastId = event.lastEventId;
      var data = parseJson(event.data);
      if (data !== null) (data.runs || [data]).forEach(noticeRun);
      if (data !== null && handlers[name]) handlers[name](data);
    }

    function connect() {
      retryTimer = null;
      if (closed) return;
      source = new EventSource(urlWithLastId());
      source.addEventListener("open", function () { retryDelay = 3000; onState("live"); });
      Object.keys(handlers).forEach(function (name) {
        if (name === "error") return;
        source.addEventListener(name, function (event) { deliver(name, event); });
      });
      source.addEventListener("error", function (event) {
        if (event.data) { deliver("error", event); return; }
        if (closed) return;
        onState("reconnecting");
        if (source.readyState === EventSource.CLOSED && retryTimer === null) {
          retryTimer = window.setTimeout(connect, retryDelay);
          retryDelay = Math.min(retryDelay * 2, 60000); // a server that refuses: ask less often
        }
      });
    }

    connect();
    return {
      lastEventId: function () { return lastId; },
      close: function () {
        closed = true;
        if (retryTimer !== null) window.clearTimeout(retryTimer);
        if (source) source.close();
      }
    };
  }

  // <time datetime="…"> elements in the reader's own time zone.
  var dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  function localTime(element) {
    var when = new Date(element.getAttribute("datetime"));
    if (!isNaN(when)) {
      element.textContent = dateFormat.format(when);
      element.title = when.toString();
    }
  }
  function localTimes(root) {
    Array.prototype.forEach.call((root || document).querySelectorAll("time[datetime]"), localTime);
  }

  window.LL = {
    bytes: bytes,
    clock: clock,
    csrfToken: csrfToken,
    errorMessage: errorMessage,
    eta: eta,
    isFinished: isFinished,
    onWorkersChange: onWorkersChange,
    workersAlive: workersAlive,
    localTime: localTime,
    localTimes: localTimes,
    parseJson: parseJson,
    percent: percent,
    request: request,
    runDetail: runDetail,
    setBadge: setBadge,
    setBar: setBar,
    statusLabels: STATUS_LABELS,
    stream: stream
  };
  localTimes(document);
  watchWorkers();
})();
