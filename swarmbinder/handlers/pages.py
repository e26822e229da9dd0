"""The HTML pages, the launch badges and ``/api/repoproviders``.

Routes, all under ``base_url``::

    GET /                         home page: repository form, launch link and badge snippets
    GET /v2/{provider}/{spec}     loading page: follows /build and sends the browser on
    GET /repo/{org}/{repo}[/...]  the first Binder's links, redirected to /v2/gh/...
    GET /about                    versions and about_message
    GET /badge.svg, /badge_logo.svg, /assets/images/badge.svg
    GET /logo_social.png          the picture of social media previews (og:image)
    GET /robots.txt               keeps crawlers off launch links (also in API-only mode)
    GET /api/repoproviders        the providers, as BinderHub lists them (also in API-only mode)
    GET /static/...               this package's CSS, JS and images

With ``enable_api_only_mode`` only ``/api/repoproviders`` and ``/robots.txt`` are added. Unknown
paths get a friendly 404 page when the client asks for HTML.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from ..config import Config
from ..errors import SwarmbinderError
from ..keys import BUILD_TOKENS, CLIENT_IP, PAGE_SITE, RATE_LIMITER
from ..pages import SOCIAL_IMAGE, PageSite, legacy_redirect_target, raw_path_after
from ..policy.buildtokens import BuildTokens, token_origin
from ..policy.clientip import ClientIP
from ..policy.tokenmint import Charge, charge
from ..providers import ProviderRegistry
from .hubauth import login_required

log = logging.getLogger(__name__)


_HTML = "text/html"
_SVG = "image/svg+xml"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _page(site: PageSite, template: str, status: int = 200, **values: object) -> web.Response:
    return web.Response(
        text=site.render(template, **values), status=status, content_type=_HTML, charset="utf-8"
    )


def _error_page(site: PageSite, status: int, message: str) -> web.Response:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return _page(
        site, "error.html", status=status, status_code=status, reason=reason, message=message
    )


def _user_error(site: PageSite, error: SwarmbinderError) -> web.Response:
    """A 4xx page for bad input; anything else is our fault and logged as such."""
    status = error.status_code
    if not 400 <= status < 500:
        log.error("page request failed: %s", error)
    return _error_page(site, status, error.user_message)


async def home(request: web.Request) -> web.Response:
    site = request.app[PAGE_SITE]
    return _page(site, "index.html", repo_providers=site.repo_providers())


def _token_charge(request: web.Request, site: PageSite) -> Callable[[], Awaitable[Charge]] | None:
    """How the page pays for its build token: one request from the client's rate limit, as
    ``/build`` counts it. Free with ``auth_enabled``: the page needs a login, and a logged-in
    user is not rate limited at ``/build`` either."""
    limiter = request.app.get(RATE_LIMITER)
    if limiter is None or site.config.hub.auth_enabled:
        return None
    client_ip = request.app.get(CLIENT_IP) or ClientIP(site.config.server.trusted_proxies)
    key = client_ip.limit_key(request.remote, request.headers)
    return lambda: charge(limiter.check, key)


async def loading(request: web.Request) -> web.Response:
    site = request.app[PAGE_SITE]
    provider = request.match_info["provider"]
    raw_spec = raw_path_after(request.raw_path, f"{site.base_url}v2/{provider}/")
    try:
        launch = await site.launch_page(
            provider,
            raw_spec,
            dict(request.query),
            token_origin(request.headers),
            pay=_token_charge(request, site),
        )
    except SwarmbinderError as e:
        return _user_error(site, e)
    # Over the limit the page is still shown, without a token and with the limit's message,
    # so a person sees when to come back; a script reads the 429 and Retry-After.
    status = 429 if launch.refusal else 200
    response = _page(
        site, "loading.html", status=status, launch=launch, repo_providers=site.repo_providers()
    )
    response.headers.update(launch.charge.headers())
    # the page carries a build token: neither proxies nor the back button should replay it
    response.headers["Cache-Control"] = "no-store"
    return response


async def legacy_redirect(request: web.Request) -> web.StreamResponse:
    site = request.app[PAGE_SITE]
    org, repo = request.match_info["org"], request.match_info["repo"]
    path = request.match_info.get("path", "")
    try:
        target = legacy_redirect_target(site.base_url, org, repo, f"/{path}" if path else "")
    except SwarmbinderError as e:
        return _user_error(site, e)
    raise web.HTTPFound(target)


async def about(request: web.Request) -> web.Response:
    site = request.app[PAGE_SITE]
    return _page(
        site, "about.html", about_message=site.config.pages.about_message, versions=site.versions()
    )


def _badge(name: str, content_type: str = _SVG) -> _Handler:
    async def badge(request: web.Request) -> web.Response:
        body = request.app[PAGE_SITE].badges[name]
        return web.Response(
            body=body,
            content_type=content_type,
            headers={"Cache-Control": "public, max-age=3600"},
        )

    return badge


async def robots_txt(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[PAGE_SITE].robots_txt(),
        content_type="text/plain",
        headers={"Cache-Control": "public, max-age=3600"},
    )


async def repo_providers(request: web.Request) -> web.Response:
    site = request.app[PAGE_SITE]
    headers = {}
    if site.config.server.cors_allow_origin:
        headers["Access-Control-Allow-Origin"] = site.config.server.cors_allow_origin
    return web.json_response(site.repo_providers(), headers=headers)


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept or "application/xhtml+xml" in accept


@web.middleware
async def not_found_page(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """A friendly page for paths no route knows, for browsers; API clients keep plain 404s.

    Only the router's own 404 is replaced: a handler that answers 404 on purpose (an unknown
    build, say) keeps its answer.
    """
    try:
        return await handler(request)
    except web.HTTPNotFound:
        if request.match_info.http_exception is None or not _wants_html(request):
            raise
        site = request.app[PAGE_SITE]
        return _page(site, "404.html", status=404, path=request.path)


def _redirect_to(target: str) -> _Handler:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(target)

    return redirect


def add_page_routes(
    app: web.Application,
    config: Config,
    *,
    providers: ProviderRegistry | None = None,
    tokens: BuildTokens | None = None,
) -> None:
    """Register the pages, badges and ``/api/repoproviders`` under ``config.server.base_url``.

    ``providers`` is the configured registry (default: every provider with default settings,
    enough to list them and check spec forms). ``tokens`` is the process's build token issuer;
    by default one is made from ``config.tokens`` and stored under :data:`BUILD_TOKENS` for
    the ``/build`` handler to verify with.
    """
    if tokens is None:
        tokens = app.get(BUILD_TOKENS)
    site = PageSite.create(config, providers=providers, tokens=tokens)
    app[PAGE_SITE] = site
    app[BUILD_TOKENS] = site.tokens

    base = config.server.base_url
    router = app.router
    router.add_get(f"{base}api/repoproviders", repo_providers)
    # crawlers must stay off /build in API-only mode too
    router.add_get(f"{base}robots.txt", robots_txt)
    if config.server.enable_api_only_mode:
        return

    # With auth_enabled the pages that lead to a launch need a login, as BinderHub's
    # @authenticated ones; about, badges and static files stay public.
    guard: Callable[[_Handler], _Handler] = (
        login_required if config.hub.auth_enabled else (lambda handler: handler)
    )
    router.add_get(base, guard(home))
    if base != "/":
        router.add_get(base.rstrip("/"), _redirect_to(base))
    # [\s\S]: an escaped CR/LF in a spec must reach the spec checks, not fall through to 404
    router.add_get(f"{base}v2/{{provider}}/{{spec:[\\s\\S]+}}", guard(loading))
    router.add_get(f"{base}repo/{{org}}/{{repo}}", guard(legacy_redirect))
    router.add_get(f"{base}repo/{{org}}/{{repo}}/{{path:[\\s\\S]*}}", guard(legacy_redirect))
    router.add_get(f"{base}about", about)
    router.add_get(f"{base}badge.svg", _badge("badge.svg"))
    router.add_get(f"{base}badge_logo.svg", _badge("badge_logo.svg"))
    router.add_get(f"{base}{SOCIAL_IMAGE}", _badge(SOCIAL_IMAGE, "image/png"))
    # mybinder.org's first badges pointed here
    router.add_get(f"{base}assets/images/badge.svg", _badge("badge.svg"))
    router.add_static(f"{base}static/", site.static.directory)
    pages = config.pages
    if pages.extra_static_path:
        prefix = f"{base}{pages.extra_static_url_prefix.lstrip('/')}"
        router.add_static(prefix, pages.extra_static_path)
    app.middlewares.append(not_found_page)
