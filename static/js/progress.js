/* Live task status: follows the task's event stream (GET /api/v1/tasks/<id>/events, server-sent events,
 * session auth) while it is queued or running, and falls back to polling its JSON (GET /api/v1/tasks/<id>/)
 * about once a second where streams are unavailable. Updates the badge, the bar, the position and the ETA,
 * the live preview of a task that asked for one (its preview_url changes with the progress), and stops when
 * it ends. On the task page ([data-reload-on-finish]) the finished page is then loaded, with
 * its images or error. The queue page streams its first rows and polls the rest slowly. */
(function () {
  "use strict";

  var FINISHED = ["completed", "failed", "cancelled"];
  var LABELS = {
    queued: "Queued", leased: "Starting", running: "Running",
    completed: "Completed", failed: "Failed", cancelled: "Cancelled"
  };
  var INTERVAL_MS = 800;
  var SLOW_INTERVAL_MS = 4000; // hidden tabs, and rows past the first 20 on the queue page
  var ERROR_INTERVAL_MS = 3000;

  function duration(seconds) {
    seconds = Math.round(seconds);
    if (seconds < 60) return seconds + " s";
    var minutes = Math.floor(seconds / 60), secs = seconds % 60;
    if (minutes < 60) return secs && minutes < 10 ? minutes + " min " + secs + " s" : minutes + " min";
    var hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    return minutes ? hours + " h " + minutes + " min" : hours + " h";
  }

  function field(block, name) {
    return block.querySelector('[data-field="' + name + '"]');
  }

  function etaSeconds(block, data) {
    var median = parseFloat(block.dataset.median);
    var workers = parseInt(block.dataset.workers, 10) || 0;
    if (isNaN(median)) return null;
    if (data.status === "queued") {
      return data.queue_position && workers > 0 ? median * data.queue_position / workers : null;
    }
    if (data.status === "leased" || data.status === "running") {
      return median * (1 - data.progress.percent / 100);
    }
    return null;
  }

  function detailText(block, data) {
    var eta = etaSeconds(block, data);
    var worker = data.worker || "a worker";
    switch (data.status) {
      case "queued":
        if (eta !== null) return "Number " + data.queue_position + " in the queue · done in about " + duration(eta);
        if (!(parseInt(block.dataset.workers, 10) > 0)) {
          return "Number " + data.queue_position + " in the queue · waiting for a worker to come online";
        }
        return "Number " + data.queue_position + " in the queue";
      case "leased":
        return "Waiting for " + worker + (eta !== null ? " · done in about " + duration(eta) : "");
      case "running":
        return "Rendering on " + worker + (eta !== null ? " · about " + duration(eta) + " left" : "");
      case "completed":
        return "Finished";
      default:
        return LABELS[data.status] || data.status;
    }
  }

  function render(block, data) {
    var percent = data.status === "completed" ? 100 : data.progress.percent;
    var badge = field(block, "badge");
    if (badge && block.dataset.status !== data.status) {
      badge.textContent = LABELS[data.status] || data.status;
      badge.className = "badge badge-" + data.status;
    }
    block.dataset.status = data.status;
    var bar = field(block, "bar");
    if (bar) {
      bar.setAttribute("aria-valuenow", String(percent));
      var fill = bar.firstElementChild;
      fill.style.width = percent + "%";
      fill.className = "progress-fill progress-" + data.status;
    }
    var text = field(block, "percent");
    if (text) text.textContent = percent + " %";
    var detail = field(block, "detail");
    if (detail) detail.textContent = detailText(block, data);
    var preview = field(block, "preview");
    if (preview && data.preview_url && preview.dataset.src !== data.preview_url) {
      // 404 until the first preview comes: shown once one loads, kept until the next one has loaded.
      var next = new Image();
      next.onload = function () { preview.src = next.src; preview.hidden = false; };
      next.src = preview.dataset.src = data.preview_url;
    }
    if (preview && FINISHED.indexOf(data.status) >= 0) preview.hidden = true;
    var worker = document.querySelector('[data-field="worker"]');
    if (worker && block.hasAttribute("data-reload-on-finish") && data.worker) worker.textContent = data.worker;
  }

  function finish(block) {
    var scope = block.closest(".queue-item") || document;
    scope.querySelectorAll("[data-hide-when-finished]").forEach(function (el) { el.hidden = true; });
    if (block.hasAttribute("data-reload-on-finish")) {
      window.setTimeout(function () { window.location.reload(); }, 600);
    }
  }

  function update(block, data) {
    render(block, data);
    var done = FINISHED.indexOf(data.status) >= 0;
    if (done) finish(block);
    return done;
  }

  // An event stream whose "task" events go to `deliver`; false when the browser has none. A stream that
  // fails before its first event (a proxy that buffers it, an old server) gives way to polling; after that,
  // EventSource reconnects by itself and the stream starts again from the tasks' current state.
  function stream(url, deliver, fallback) {
    if (!url || !window.EventSource) return false;
    var source = new EventSource(url, { withCredentials: true });
    var heard = false;
    source.addEventListener("task", function (message) {
      heard = true;
      if (deliver(JSON.parse(message.data))) source.close();
    });
    source.onerror = function () {
      if (!heard || source.readyState === EventSource.CLOSED) {
        source.close();
        fallback();
      }
    };
    return true;
  }

  function start(block, index) {
    var url = block.dataset.pollUrl;
    var interval = index < 20 ? INTERVAL_MS : SLOW_INTERVAL_MS;

    function schedule(ms) {
      window.setTimeout(poll, document.hidden ? Math.max(ms, SLOW_INTERVAL_MS) : ms);
    }

    function poll() {
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then(function (data) {
          if (!update(block, data)) schedule(interval);
        })
        .catch(function () { schedule(ERROR_INTERVAL_MS); });
    }

    if (FINISHED.indexOf(block.dataset.status) < 0) schedule(Math.min(interval, 300));
  }

  var blocks = Array.prototype.slice.call(document.querySelectorAll("[data-task-progress]"));
  var list = document.querySelector("[data-task-events]");
  function pollAll() { blocks.forEach(start); }

  if (list) {
    // The queue page: one stream for all of the user's tasks (browsers allow few connections per host).
    var byId = {};
    blocks.forEach(function (block) { byId[block.dataset.taskId] = block; });
    var following = stream(list.dataset.taskEvents, function (data) {
      var block = byId[data.id];
      if (block && FINISHED.indexOf(block.dataset.status) < 0) update(block, data);
      return false;
    }, pollAll);
    if (!following) pollAll();
  } else if (blocks.length === 1 && FINISHED.indexOf(blocks[0].dataset.status) < 0) {
    var block = blocks[0];
    if (!stream(block.dataset.eventsUrl, function (data) { return update(block, data); },
                function () { start(block, 0); })) start(block, 0);
  } else {
    pollAll();
  }
})();
