/* Home page: provider form, live launch link and badge snippets. */
(function () {
  "use strict";
  var B = window.SwarmBinder;
  var config = B.readJson("page-config");
  var providers = config.repoProviders;
  var here = new URL(config.baseUrl, window.location.href);
  // badges and shared links point at the public address when one is configured
  var publicBase = config.badgeBaseUrl ? new URL(config.badgeBaseUrl) : here;
  var badgeUrl = new URL(config.badgeLogoPath, publicBase).toString();

  var PATH_KINDS = {
    file: {
      label: "File to open (in JupyterLab)",
      placeholder: "e.g. index.ipynb",
      // doc/tree opens documents as well as notebooks
      urlPath: function (input) { return "/doc/tree/" + input; },
    },
    url: {
      label: "URL to open",
      placeholder: "e.g. /rstudio",
      urlPath: function (input) { return input; },
    },
  };

  var el = function (id) { return document.getElementById(id); };
  var form = el("launch-form");
  var providerSelect = el("provider");
  var repoInput = el("repository");
  var refInput = el("ref");
  var pathInput = el("path");
  var pathKind = el("path-kind");
  var launchButton = el("launch");

  function selectedProvider() {
    for (var i = 0; i < providers.length; i++) {
      if (providers[i].id === providerSelect.value) {
        return providers[i];
      }
    }
    return providers[0];
  }

  /* The repository part as the provider's detect regex sees it ("" while not valid yet). */
  function detectedRepo(provider) {
    var value = repoInput.value.trim();
    if (provider.detect && provider.detect.regex) {
      var match = new RegExp(provider.detect.regex).exec(value);
      return match && match.groups && match.groups.repo ? match.groups.repo : "";
    }
    return value;
  }

  function currentLink(base) {
    var provider = selectedProvider();
    var repo = detectedRepo(provider);
    var ref = refInput.value.trim() || (provider.ref.enabled ? provider.ref.default : "");
    if (repo === "" || (provider.ref.enabled && ref === "")) {
      return null;
    }
    var path = pathInput.value.trim();
    var urlPath = path ? PATH_KINDS[pathKind.value].urlPath(path) : "";
    return B.shareableUrl(base, provider, repo, ref, urlPath);
  }

  function show(id, text) {
    var node = el(id);
    node.textContent = text === null ? node.dataset.empty : text;
    node.classList.toggle("empty", text === null);
  }

  function update() {
    var provider = selectedProvider();
    el("repository-label").textContent = provider.repo.label;
    repoInput.placeholder = provider.repo.placeholder || "";
    refInput.disabled = !provider.ref.enabled;
    refInput.placeholder = (provider.ref.enabled && provider.ref.default) || "";
    var kind = PATH_KINDS[pathKind.value];
    el("path-label").textContent = kind.label;
    pathInput.placeholder = kind.placeholder;

    var link = currentLink(publicBase);
    var launchUrl = link ? link.toString() : null;
    show("launch-url", launchUrl);
    show("badge-markdown", launchUrl && B.badgeMarkup("markdown", badgeUrl, launchUrl));
    show("badge-rst", launchUrl && B.badgeMarkup("rst", badgeUrl, launchUrl));
    show("badge-html", launchUrl && B.badgeMarkup("html", badgeUrl, launchUrl));
    launchButton.disabled = launchUrl === null;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    // launch here, on this server, whatever public address the badges use
    var link = currentLink(here);
    if (link) {
      launchButton.disabled = true;
      launchButton.textContent = "launching…";
      window.location.href = link.toString();
    }
  });
  [providerSelect, pathKind].forEach(function (node) { node.addEventListener("change", update); });
  [repoInput, refInput, pathInput].forEach(function (node) { node.addEventListener("input", update); });
  document.querySelectorAll("[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () { B.copyText(button.dataset.copy, button); });
  });
  update();
})();
