/* Shared helpers of the home and loading pages. Plain ES2018, no build step.
 *
 * The URL rules follow BinderHub's browser code (binderhub-client spec.js and the link
 * generator) so that links made here and on mybinder.org mean the same thing.
 */
(function (global) {
  "use strict";

  /* LaunchSpec.fromSearchParams: the path to open inside the server after launch. */
  function launchUrlPath(searchParams) {
    var urlPath = searchParams.get("urlpath");
    if (urlPath === null) {
      urlPath = "";
    }
    if (searchParams.has("labpath")) {
      urlPath = "doc/tree/" + encodeURI(searchParams.get("labpath").replace(/(\/$)/g, ""));
    } else if (searchParams.has("filepath")) {
      urlPath = "tree/" + encodeURI(searchParams.get("filepath").replace(/(\/$)/g, ""));
    }
    return urlPath.replace(/^\/*/, "");
  }

  /* LaunchSpec.getJupyterServerRedirectUrl, refusing to leave the server's origin. */
  function jupyterRedirectUrl(serverUrl, token, urlPath) {
    var server = new URL(serverUrl);
    var target = new URL(urlPath.replace(/^\/*/, ""), server);
    if (target.origin !== server.origin) {
      target = new URL(server);
    }
    if (token) {
      target.searchParams.append("token", token);
    }
    return target;
  }

  /* The shareable /v2/ link of the link generator. */
  function shareableUrl(baseUrl, provider, repo, ref, urlPath) {
    var encodedRepo = provider.repo && provider.repo.urlEncode ? encodeURIComponent(repo) : repo;
    var url = new URL("v2/" + provider.id + "/" + encodedRepo + "/" + ref, baseUrl);
    if (urlPath) {
      url.searchParams.set("urlpath", urlPath);
    }
    return url;
  }

  function escapeHtml(text) {
    return String(text)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;");
  }

  function badgeMarkup(kind, badgeUrl, launchUrl) {
    if (kind === "markdown") {
      return "[![Binder](" + badgeUrl + ")](" + launchUrl + ")";
    }
    if (kind === "rst") {
      return ".. image:: " + badgeUrl + "\n :target: " + launchUrl;
    }
    return '<a href="' + escapeHtml(launchUrl) + '"><img src="' + escapeHtml(badgeUrl) +
      '" alt="Binder"></a>';
  }

  /* An incremental text/event-stream parser: feed text, get {data} events back. */
  function SSEParser() {
    this.buffer = "";
    this.data = [];
  }
  SSEParser.prototype.feed = function (text) {
    var events = [];
    this.buffer += text;
    var lines = this.buffer.split(/\r\n|\r|\n/);
    // the last piece may be an incomplete line (or a lone \r before its \n)
    this.buffer = lines.pop();
    for (var i = 0; i < lines.length; i++) {
      var line = lines[i];
      if (line === "") {
        if (this.data.length) {
          events.push(this.data.join("\n"));
        }
        this.data = [];
      } else if (line.charAt(0) === ":") {
        continue; // comment: keepalive
      } else if (line.indexOf("data:") === 0) {
        this.data.push(line.slice(5).replace(/^ /, ""));
      }
    }
    return events;
  };

  function copyText(elementId, button) {
    var element = document.getElementById(elementId);
    if (!element || element.dataset.empty === element.textContent) {
      return;
    }
    var done = function () {
      var old = button.textContent;
      button.textContent = "copied";
      setTimeout(function () { button.textContent = old; }, 1200);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(element.textContent).then(done, function () {});
    }
  }

  function readJson(id) {
    return JSON.parse(document.getElementById(id).textContent);
  }

  global.SwarmBinder = {
    launchUrlPath: launchUrlPath,
    jupyterRedirectUrl: jupyterRedirectUrl,
    shareableUrl: shareableUrl,
    badgeMarkup: badgeMarkup,
    SSEParser: SSEParser,
    copyText: copyText,
    readJson: readJson,
  };
})(window);
