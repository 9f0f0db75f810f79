// Uploads one file with a progress bar, then hands over to the run page.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  var list = document.getElementById("uploads");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var data = new FormData(form);
    data.set("mode", "async");
    var item = document.createElement("div");
    item.className = "card";
    var label = document.createElement("p");
    label.textContent = data.get("file").name + ": uploading";
    var bar = document.createElement("progress");
    bar.max = 100; bar.value = 0;
    bar.setAttribute("aria-label", "Upload progress");
    item.appendChild(label); item.appendChild(bar);
    list.prepend(item);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/transcribe");
    xhr.setRequestHeader("X-CSRFToken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    xhr.upload.onprogress = function (e) { if (e.lengthComputable) bar.value = 100 * e.loaded / e.total; };
    xhr.onload = function () {
      var body = {};
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 201 || xhr.status === 202) {
        window.location = "/runs/" + body.runId + "/";
      } else {
        label.textContent = data.get("file").name + ": " + ((body.error && body.error.message) || "upload failed");
        label.className = "error";
      }
    };
    xhr.onerror = function () { label.textContent = "The upload was interrupted."; label.className = "error"; };
    xhr.send(data);
  });
})();
