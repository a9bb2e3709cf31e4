/* The original front end: POST /generate (JSON, CSRF token in X-CSRFToken), then GET /status/<prompt_id>
 * once a second until the task completes or fails, then show the image. */
(function () {
  "use strict";

  var form = document.getElementById("legacy-form");
  if (!form) return;
  var statusText = document.getElementById("legacy-status");
  var progress = document.getElementById("legacy-progress");
  var button = document.getElementById("legacy-submit");
  var result = document.getElementById("legacy-result");
  var image = document.getElementById("legacy-image");
  var link = document.getElementById("legacy-link");
  var csrf = form.querySelector('input[name="csrfmiddlewaretoken"]').value;

  function setProgress(percent, status) {
    progress.hidden = false;
    progress.firstElementChild.className = "progress-fill progress-" + (status || "running");
    progress.setAttribute("aria-valuenow", String(percent));
    progress.firstElementChild.style.width = percent + "%";
  }

  function done(message) {
    statusText.textContent = message;
    button.disabled = false;
  }

  function poll(promptId) {
    fetch(form.dataset.statusUrl.replace("PROMPT_ID", encodeURIComponent(promptId)), {
      credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" }
    })
      .then(function (response) { return response.json(); })
      .then(function (data) {
        setProgress(data.progress || 0, data.status === "pending" ? "queued" : data.status);
        if (data.status === "completed") {
          image.src = data.image_url;
          image.alt = form.elements.prompt.value;
          link.href = data.image_url;
          result.hidden = false;
          done("Done.");
        } else if (data.status === "failed" || data.status === "cancelled") {
          done("The task " + data.status + (data.error ? ": " + data.error : "."));
        } else {
          statusText.textContent = data.status === "pending"
            ? "Waiting" + (data.queue_position ? " (number " + data.queue_position + " in the queue)" : "") + "…"
            : "Rendering… " + data.progress + " %";
          window.setTimeout(function () { poll(promptId); }, 1000);
        }
      })
      .catch(function () { window.setTimeout(function () { poll(promptId); }, 3000); });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    result.hidden = true;
    setProgress(0);
    statusText.textContent = "Sending…";
    fetch(form.dataset.generateUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify({
        prompt: form.elements.prompt.value,
        negative_prompt: form.elements.negative_prompt.value
      })
    })
      .then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      })
      .then(function (answer) {
        if (!answer.ok) {
          var fields = answer.data.fields || {};
          var first = Object.keys(fields)[0];
          progress.hidden = true;
          done(first ? first + ": " + fields[first][0] : answer.data.detail || "The request was refused.");
          return;
        }
        statusText.textContent = "Queued…";
        poll(answer.data.prompt_id);
      })
      .catch(function () {
        progress.hidden = true;
        done("Could not reach the server.");
      });
  });

  form.elements.prompt.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
})();
