"""What the HTML pages are made of: templates, static files, launch URLs and redirects.

The handlers in :mod:`swarmbinder.handlers.pages` parse a request and call into this module; it
never imports ``aiohttp.web``. The URL rules copy BinderHub's browser code so that links and
badges made for mybinder.org keep working:

* a launch link is ``{base_url}v2/{provider}/{spec}`` with an optional ``urlpath``, or the
  older ``labpath`` (opens ``doc/tree/<path>``) and ``filepath`` (opens ``tree/<path>``);
* once the server is ready the browser goes to ``urljoin(url, urlpath) + ?token=...``
  (binderhub-client's ``LaunchSpec.getJupyterServerRedirectUrl``);
* ``/repo/{org}/{repo}[/{path}]`` from the first Binder goes to ``v2/gh/{org}/{repo}/HEAD``
  with ``{path}`` as the ``urlpath``.

Templates are jinja2 files from ``template_path`` first, then the packaged ones. A custom
template can extend the packaged one of the same name as ``templates/<name>`` (BinderHub's
``PrefixLoader`` convention, which mybinder.org's custom pages rely on).
"""

from __future__ import annotations

import hashlib
import platform
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

import jinja2

from . import __version__
from .config import Config
from .errors import SpecError, SwarmbinderError
from .policy.buildtokens import BuildTokens, build_audience
from .policy.tokenmint import Charge
from .providers import (
    CKANProvider,
    DataverseProvider,
    FigshareProvider,
    GistRepoProvider,
    GitHubRepoProvider,
    GitLabRepoProvider,
    GitRepoProvider,
    HydroshareProvider,
    ProviderRegistry,
    ZenodoProvider,
    check_text,
    parse_spec,
)

__all__ = [
    "PACKAGE_TEMPLATES",
    "PACKAGE_STATIC",
    "ROBOTS_DISALLOWED",
    "SOCIAL_IMAGE",
    "BadLaunchParameter",
    "LaunchPage",
    "PageSite",
    "StaticFiles",
    "check_url_path",
    "class_registry",
    "jupyter_redirect_url",
    "launch_url_path",
    "legacy_redirect_target",
    "make_template_env",
    "raw_path_after",
]

PACKAGE_TEMPLATES = Path(__file__).parent / "templates"
PACKAGE_STATIC = Path(__file__).parent / "static"

#: JavaScript's encodeURI leaves these as they are; labpath/filepath are escaped like it.
_ENCODE_URI_SAFE = ";,/?:@&=+$-_.!~*'()#"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The picture of social media previews (og:image), served at ``{base_url}logo_social.png``.
SOCIAL_IMAGE = "logo_social.png"
#: What crawlers are told: launch links start builds and servers, so none of them is followed.
ROBOTS_DISALLOWED = ("v2/", "build/", "repo/")
#: A launch parameter longer than this is a mistake or an attack, not a notebook path.
MAX_URL_PATH = 2048


class BadLaunchParameter(SwarmbinderError, status=400):
    """``urlpath``, ``labpath`` or ``filepath`` would leave the user's server, or is garbage."""


# --- launch URLs -------------------------------------------------------------------------------


def launch_url_path(query: Mapping[str, str]) -> str:
    """binderhub-client's ``LaunchSpec.fromSearchParams``: the path to open in the server.

    ``labpath`` wins over ``filepath``, both over ``urlpath``; a trailing ``/`` of a file path
    is dropped and the path is escaped like JavaScript's ``encodeURI``. Leading slashes go, so
    the result is relative to the server URL.
    """
    url_path = query.get("urlpath", "")
    if "labpath" in query:
        url_path = "doc/tree/" + quote(query["labpath"].rstrip("/"), safe=_ENCODE_URI_SAFE)
    elif "filepath" in query:
        url_path = "tree/" + quote(query["filepath"].rstrip("/"), safe=_ENCODE_URI_SAFE)
    return url_path.lstrip("/")


def check_url_path(url_path: str) -> None:
    """Refuse a launch path that would take the user outside their own server.

    binderhub-client joins it to the server URL as a relative URL, so a scheme
    (``https://elsewhere``), a ``//host`` or a ``..`` segment (also spelled ``%2e%2e``, which
    URL parsers treat the same) would lead elsewhere.
    """
    if len(url_path) > MAX_URL_PATH:
        raise BadLaunchParameter(
            f"The path to open is too long ({len(url_path)} characters, at most {MAX_URL_PATH})."
        )
    decoded = unquote(url_path)
    if _CONTROL.search(decoded):
        raise BadLaunchParameter("The path to open contains control characters.")
    path_only = re.split(r"[?#]", url_path, maxsplit=1)[0]
    if _SCHEME.match(path_only) or path_only.startswith("//"):
        raise BadLaunchParameter(
            f"The path to open must be a path inside the Jupyter server, not a URL: {url_path!r}."
        )
    segments = unquote(path_only).replace("\\", "/").split("/")
    if ".." in segments or "." in segments:
        raise BadLaunchParameter(
            f"The path to open must not contain '.' or '..' segments: {url_path!r}."
        )


def jupyter_redirect_url(server_url: str, token: str, url_path: str) -> str:
    """Where the browser goes on ``ready``, as binderhub-client computes it.

    ``new URL(urlPath, serverUrl)`` then ``searchParams.append("token", token)``: the path is
    resolved against the server URL (which ends in ``/``) and the token is appended to any
    query the path already has.
    """
    target = urlsplit(urljoin(server_url, url_path.lstrip("/")))
    query = parse_qsl(target.query, keep_blank_values=True)
    if token:
        query.append(("token", token))
    # URLSearchParams serialises like application/x-www-form-urlencoded
    return urlunsplit(target._replace(query=urlencode(query, safe="*")))


def legacy_redirect_target(base_url: str, org: str, repo: str, path: str = "") -> str:
    """``/repo/{org}/{repo}[/{path}]`` (the first Binder's links) to a ``/v2/gh/`` launch URL.

    BinderHub sends these to the ``master`` branch; ``HEAD`` is the repository's default
    branch, which is ``master`` for the repositories of that era and still right for the rest.
    """
    for value, what in ((org, "Organisation"), (repo, "Repository")):
        check_text(unquote(value), what)
        if unquote(value) in {".", ".."}:
            raise SpecError(f"{what} must not be '.' or '..'.")
    target = f"{base_url}v2/gh/{org}/{repo}/HEAD"
    if path.strip("/"):
        check_url_path(path.lstrip("/"))
        target += "?" + urlencode({"urlpath": path})
    return target


def raw_path_after(raw_path: str, prefix: str) -> str:
    """The raw (still percent-escaped) rest of a request path after ``prefix``.

    Routers decode the path, which merges ``gl/group%2Fproject/main`` with ``gl/group/project/
    main``; launch specs need the text as sent (BinderHub's ``get_spec_from_request``).
    """
    path = raw_path.split("?", 1)[0]
    index = path.find(prefix)
    if index < 0:
        # the prefix itself was escaped by the client; fall back to matching the decoded form
        decoded = unquote(path)
        index = decoded.find(prefix)
        return decoded[index + len(prefix) :] if index >= 0 else ""
    return path[index + len(prefix) :]


# --- providers ---------------------------------------------------------------------------------


def class_registry() -> ProviderRegistry:
    """The providers with their default settings, for pages when no configured registry is given.

    Good enough to list providers and reject malformed specs; resolving needs the configured
    registry from :func:`~swarmbinder.providers.default_registry`.
    """
    registry = ProviderRegistry()
    for cls in (
        GitHubRepoProvider,
        GistRepoProvider,
        GitLabRepoProvider,
        GitRepoProvider,
        ZenodoProvider,
        FigshareProvider,
        HydroshareProvider,
        DataverseProvider,
        CKANProvider,
    ):
        registry.register(cls)
    return registry


@dataclass(frozen=True)
class LaunchPage:
    """A checked ``/v2/`` request: what the loading page needs to render."""

    provider: str
    display_name: str
    spec: str
    #: ``/build`` with the token; empty when the client was over its rate limit.
    build_url: str
    build_token: str
    url_path: str
    #: What the rate limit said to this page's token (:mod:`~swarmbinder.policy.tokenmint`).
    charge: Charge = field(default_factory=Charge)

    @property
    def refusal(self) -> str:
        """The message the page shows instead of following a build, or ``""``."""
        refusal = self.charge.refusal
        return refusal.user_message if refusal is not None else ""

    #: the repository as people write it: decoded, never percent-escaped (a git URL, say)
    repository: str = ""
    #: the ref asked for, decoded ("" for providers without refs)
    ref: str = ""

    @property
    def provider_spec(self) -> str:
        return f"{self.provider}/{self.spec}"

    @property
    def decoded_spec(self) -> str:
        return unquote(self.spec)


# --- static files and templates ----------------------------------------------------------------


class StaticFiles:
    """Static file URLs with a content hash, so browsers may cache them and still see changes."""

    def __init__(self, directory: Path, url_prefix: str) -> None:
        self.directory = directory
        self.url_prefix = url_prefix
        self._versions: dict[str, str] = {}
        for path in sorted(directory.iterdir()):
            if path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                self._versions[path.name] = digest[:12]

    def url(self, name: str) -> str:
        version = self._versions.get(name)
        url = f"{self.url_prefix}{name}"
        return f"{url}?v={version}" if version else url

    def read(self, name: str) -> bytes:
        if name not in self._versions:
            raise FileNotFoundError(name)
        return (self.directory / name).read_bytes()


def make_template_env(
    template_path: str = "", package_dir: Path = PACKAGE_TEMPLATES
) -> jinja2.Environment:
    """Templates from ``template_path`` first, then the packaged ones (also as ``templates/*``).

    Every template is compiled here, once: rendering then never reads a file on the event loop,
    and a broken custom template fails at startup instead of on a user's request.
    """
    search = [template_path] if template_path else []
    search.append(str(package_dir))
    loader = jinja2.ChoiceLoader(
        [
            jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader(str(package_dir))}, "/"),
            jinja2.FileSystemLoader(search),
        ]
    )
    env = jinja2.Environment(
        loader=loader,
        autoescape=jinja2.select_autoescape(["html", "htm", "xml", "svg"], default=True),
        auto_reload=False,
        cache_size=-1,
    )
    for name in env.list_templates():
        env.get_template(name)
    return env


@dataclass
class PageSite:
    """Everything the page handlers share: config, templates, static files, providers, tokens."""

    config: Config
    env: jinja2.Environment
    static: StaticFiles
    providers: ProviderRegistry
    tokens: BuildTokens
    badges: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        config: Config,
        *,
        providers: ProviderRegistry | None = None,
        tokens: BuildTokens | None = None,
    ) -> PageSite:
        base = config.server.base_url
        static = StaticFiles(PACKAGE_STATIC, f"{base}static/")
        if tokens is None:
            tokens = BuildTokens(
                config.tokens.build_token_secret,
                expires_seconds=config.tokens.build_token_expires_seconds,
                check_origin=config.tokens.build_token_check_origin,
            )
        return cls(
            config=config,
            env=make_template_env(config.pages.template_path),
            static=static,
            providers=(
                providers
                if providers is not None
                else class_registry().restricted_to(config.server.repo_providers)
            ),
            tokens=tokens,
            badges={
                name: static.read(name) for name in ("badge.svg", "badge_logo.svg", SOCIAL_IMAGE)
            },
        )

    @property
    def base_url(self) -> str:
        return self.config.server.base_url

    def repo_providers(self) -> list[Mapping[str, object]]:
        """BinderHub's ``/api/repoproviders`` body: one display config per provider."""
        return [dict(item) for item in self.providers.display_configs()]

    def render(self, name: str, **values: Any) -> str:
        pages = self.config.pages
        namespace: dict[str, Any] = {
            "base_url": self.base_url,
            "badge_base_url": pages.badge_base_url,
            "banner": pages.banner_message,
            "static_url": self.static.url,
            "extra_footer_scripts": dict(pages.extra_footer_scripts),
            "extra_header_html": dict(pages.extra_header_html),
            "default_opengraph_title": pages.default_opengraph_title,
            "social_image_url": f"{pages.badge_base_url or self.base_url}{SOCIAL_IMAGE}",
            "google_analytics_code": pages.google_analytics_code,
            "google_analytics_domain": pages.google_analytics_domain,
            "version": __version__,
        }
        namespace.update(pages.template_variables)
        namespace.update(values)
        return self.env.get_template(name).render(namespace)

    def robots_txt(self) -> str:
        """``/robots.txt``: crawlers stay off launch links (each would start a build)."""
        lines = ["User-agent: *", *(f"Disallow: {self.base_url}{p}" for p in ROBOTS_DISALLOWED)]
        return "\n".join(lines) + "\n"

    def versions(self) -> list[tuple[str, str]]:
        """What the about page lists."""
        return [
            ("swarmbinder", __version__),
            ("builder image", self.config.builds.build_image),
            ("Python", platform.python_version()),
        ]

    async def launch_page(
        self,
        provider: str,
        raw_spec: str,
        query: Mapping[str, str],
        origin: str,
        *,
        pay: Callable[[], Awaitable[Charge]] | None = None,
    ) -> LaunchPage:
        """Check a ``/v2/`` request and issue its build token, once ``pay`` allows it.

        ``pay`` charges the token to the client's rate limit (None: free); a refused charge
        gives the page without a token, to show the refusal. Raises
        :class:`~swarmbinder.errors.UnknownProvider` (404), :class:`SpecError` or
        :class:`BadLaunchParameter` (400): no page, no token, no build for bad input, and
        nothing charged for it.
        """
        # parse_spec also refuses escaped control characters and '.'/'..' segments.
        prefix, spec = parse_spec(f"{provider}/{raw_spec}")
        provider_class = self.providers.provider_class(prefix)
        repo = self.providers.get(prefix, spec)  # validates the spec's form, no network
        url_path = launch_url_path(query)
        check_url_path(url_path)
        audience = build_audience(prefix, spec)
        charge = await pay() if pay is not None else Charge()
        token = build_url = ""
        if charge.allowed:
            token = self.tokens.issue(audience, origin)
            build_url = f"{self.base_url}build/{audience}?{urlencode({'build_token': token})}"
        return LaunchPage(
            provider=prefix,
            display_name=str(provider_class.display_config.get("displayName", provider_class.name)),
            spec=spec,
            build_url=build_url,
            build_token=token,
            url_path=url_path,
            charge=charge,
            repository=repo.get_repo_url(),
            ref=getattr(repo, "unresolved_ref", ""),
        )
