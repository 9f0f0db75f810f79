// The account page: show or hide a secret (the API token, the webhook signing secret), copy
// it, and confirm before a form that replaces one is sent.
(function () {
  "use strict";

  function setUp(row) {
    var field = row.querySelector("input");
    var show = row.querySelector("[data-show]");
    var copy = row.querySelector("[data-copy]");
    var status = document.getElementById(row.dataset.status);

    show.addEventListener("click", function () {
      var hidden = field.type === "password";
      field.type = hidden ? "text" : "password";
      show.textContent = show.textContent.replace(hidden ? "Show" : "Hide", hidden ? "Hide" : "Show");
      show.setAttribute("aria-pressed", hidden ? "true" : "false");
    });

    function copied(ok) {
      status.textContent = ok ? "Copied to the clipboard." : "Copy did not work here: select the text and copy it yourself.";
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

    copy.addEventListener("click", function () {
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(field.value).then(function () { copied(true); }, fallbackCopy);
      } else {
        fallbackCopy();
      }
    });
  }

  document.querySelectorAll(".secret-row").forEach(setUp);

  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
