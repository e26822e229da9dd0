/* Loading page: follow /build/<provider>/<spec> and send the browser to the server. */
(function () {
  "use strict";
  var B = window.SwarmBinder;
  var config = B.readJson("launch-config");
  if (!config.buildUrl) {
    // over the rate limit: the page came without a build token and says why
    document.body.dataset.phase = "failed";
    document.getElementById("phases").classList.add("failed");
    return;
  }
  var buildUrl = new URL(config.buildUrl, window.location.href);
  var urlPath = B.launchUrlPath(new URLSearchParams(window.location.search));
  var ORDER = ["waiting", "fetching", "building", "pushing", "launching", "ready"];
  var MAX_RETRIES = 5;
  // The tab's icon follows the build as BinderHub's does: one icon while the image is built,
  // pushed and launched, one for success, one for failure. A custom template may leave the
  // icons out; the page then keeps its one favicon.
  var FAVICON_OF_PHASE = {
    building: "building",
    pushing: "building",
    built: "building",
    launching: "building",
    ready: "success",
    failed: "failed",
  };
  var favicons = document.getElementById("favicons") ? B.readJson("favicons") : {};

  var el = function (id) { return document.getElementById(id); };
  var log = el("log");
  // repo2docker and docker colour their output; ansi.js turns the colours into our own spans
  // (a custom template that does not load ansi.js gets the text as it comes)
  var ansiLog = B.AnsiLog ? new B.AnsiLog(log) : {
    append: function (text) { log.appendChild(document.createTextNode(text)); },
  };
  var stripAnsi = B.stripAnsi || function (text) { return text; };
  var statusLine = el("status");
  var finished = false;
  var controller = null;

  function setFavicon(phase) {
    var link = document.getElementById("favicon");
    var icon = favicons[FAVICON_OF_PHASE[phase]];
    if (link && icon) {
      link.href = icon;
    }
  }

  function appendLog(text) {
    var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    ansiLog.append(text);
    if (atBottom) {
      log.scrollTop = log.scrollHeight;
    }
  }

  function setPhase(phase) {
    setFavicon(phase);
    // built is the step between pushing and launching
    var shown = phase === "built" ? "pushing" : phase;
    var index = ORDER.indexOf(shown);
    if (index < 0) {
      return;
    }
    el("phases").querySelectorAll("li").forEach(function (item) {
      var i = ORDER.indexOf(item.dataset.phase);
      item.classList.toggle("done", i < index || phase === "ready");
      item.classList.toggle("active", i === index && phase !== "ready");
    });
    document.body.dataset.phase = phase;
    statusLine.textContent = {
      waiting: "Waiting for a build slot…",
      fetching: "Fetching the repository…",
      building: "Building the image…",
      pushing: "Pushing the image…",
      built: "Image ready, launching…",
      launching: "Launching the server…",
      ready: "Server ready, redirecting…",
    }[phase];
    statusLine.className = "status" + (phase === "ready" ? " ready" : "");
  }

  function fail(message) {
    finished = true;
    if (controller) {
      controller.abort();
    }
    document.body.dataset.phase = "failed";
    setFavicon("failed");
    el("phases").classList.add("failed");
    statusLine.textContent = "Launch failed";
    statusLine.className = "status failed";
    var box = el("failure");
    box.textContent = stripAnsi(message).trim() || "The launch failed.";
    box.classList.remove("hidden");
    log.classList.remove("hidden");
    el("toggle-log").textContent = "hide";
  }

  function ready(data) {
    finished = true;
    setPhase("ready");
    // the server keeps the stream open after ready; closing it is the client's job
    if (controller) {
      controller.abort();
    }
    window.location.href = B.jupyterRedirectUrl(data.url, data.token, urlPath).toString();
  }

  function handle(data) {
    var phase = (data.phase || "").toLowerCase();
    if (typeof data.message === "string") {
      appendLog(data.message);
    }
    if (phase === "failed") {
      fail(data.message || "The build failed.");
    } else if (phase === "ready") {
      ready(data);
    } else {
      setPhase(phase);
    }
  }

  function retryOrFail(attempt, message) {
    if (attempt >= MAX_RETRIES) {
      fail(message);
      return;
    }
    appendLog(message + " Retrying…\n");
    setTimeout(function () { connect(attempt + 1); }, 1000 * (attempt + 1));
  }

  async function connect(attempt) {
    controller = new AbortController();
    var response;
    try {
      response = await fetch(buildUrl, {
        headers: { Accept: "text/event-stream" },
        cache: "no-store",
        signal: controller.signal,
      });
    } catch (error) {
      if (!finished) {
        retryOrFail(attempt, "Could not connect to the build stream: " + error + ".");
      }
      return;
    }
    if (!response.ok) {
      var body = (await response.text()).trim();
      var text = "Failed to connect to event stream: " + response.status + " - " + body;
      // a 4xx other than 429 will not get better by asking again
      if (response.status >= 400 && response.status < 500 && response.status !== 429) {
        fail(text);
      } else {
        retryOrFail(attempt, text);
      }
      return;
    }
    statusLine.textContent = "Connected, waiting for the build…";
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var parser = new B.SSEParser();
    try {
      while (!finished) {
        var chunk = await reader.read();
        if (chunk.done) {
          break;
        }
        var events = parser.feed(decoder.decode(chunk.value, { stream: true }));
        for (var i = 0; i < events.length && !finished; i++) {
          var data = null;
          try {
            data = JSON.parse(events[i]);
          } catch (error) {
            appendLog("Unreadable event from the server: " + events[i] + "\n");
          }
          if (data) {
            handle(data);
          }
        }
      }
    } catch (error) {
      if (finished) {
        return; // our own abort after ready or failed
      }
    }
    if (!finished) {
      fail("Event stream closed unexpectedly.");
    }
  }

  el("toggle-log").addEventListener("click", function (event) {
    var hidden = log.classList.toggle("hidden");
    event.target.textContent = hidden ? "show" : "hide";
  });
  connect(0);
})();
