// The API token page: show or hide the token, copy it, confirm before regenerating.
(function () {
  "use strict";
  var field = document.getElementById("token");
  var show = document.getElementById("token-show");
  var copy = document.getElementById("token-copy");
  var status = document.getElementById("token-copy-status");
  var regenerate = document.getElementById("token-regenerate");

  if (field && show) {
    show.addEventListener("click", function () {
      var hidden = field.type === "password";
      field.type = hidden ? "text" : "password";
      show.textContent = hidden ? "Hide" : "Show";
      show.setAttribute("aria-pressed", hidden ? "true" : "false");
    });
  }

  function copied(ok) {
    status.textContent = ok ? "Copied to the clipboard." : "Copy did not work here: select the token and copy it yourself.";
    window.setTimeout(function () { status.textContent = ""; }, 4000);
  }

  // The Clipboard API needs a secure context (https or localhost); elsewhere fall back to
  // selecting the text and the older copy command.
  function fallbackCopy() {
    var type = field.type;
    field.type = "text";
    field.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    field.type = type;
    field.setSelectionRange(0, 0);
    copied(ok);
  }

  if (field && copy) {
    copy.addEventListener("click", function () {
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(function () { copied(true); }, fallbackCopy);
      } else {
        fallbackCopy();
      }
    });
  }

  if (regenerate && regenerate.dataset.confirm) {
    regenerate.addEventListener("submit", function (event) {
      if (!window.confirm(regenerate.dataset.confirm)) event.preventDefault();
    });
  }
})();
