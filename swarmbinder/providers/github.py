"""GitHub (``gh``) and GitHub Gist (``gist``) providers, for github.com or GitHub Enterprise."""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Unpack
from urllib.parse import quote

from ..errors import ProviderUnavailable, RefNotFound, SpecError
from ..gitcredentials import login_refused_message
from .base import (
    HttpOptions,
    HttpResponse,
    RepoProvider,
    answered_status,
    check_ref,
    is_full_sha,
    rate_limit_exceeded,
    retry_after,
    unexpected,
)
from .cache import EtagCache, NegativeCache
from .form import launch_form

T = TypeVar("T")

GITHUB_HOSTNAME = "github.com"
GIST_HOSTNAME = "gist.github.com"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_GIST_ID = re.compile(r"[A-Za-z0-9]+")
_GIST_HEAD_ALIASES = frozenset({"", "HEAD", "master", "main"})


@dataclass(frozen=True)
class RateLimit:
    """The rate-limit headers of GitHub's latest answer."""

    limit: int
    remaining: int
    reset: float


@dataclass(frozen=True)
class GistInfo:
    public: bool
    versions: tuple[str, ...]


@dataclass
class GitHubCache:
    """What every GitHub provider of one service shares: ETag and 404 caches, the rate limit.

    ``rate_limit`` is the last rate-limit status GitHub reported, for the
    ``binderhub_github_rate_limit_remaining`` gauge.
    """

    refs: EtagCache[str] = field(default_factory=EtagCache)
    gists: EtagCache[GistInfo] = field(default_factory=EtagCache)
    not_found: NegativeCache = field(default_factory=NegativeCache)
    rate_limit: RateLimit | None = None
    clock: Callable[[], float] = time.time


class GitHubOptions(HttpOptions, total=False):
    """The credentials and cache both GitHub providers hand on to the API client."""

    access_token: str | None
    client_id: str | None
    client_secret: str | None
    cache: GitHubCache | None


def default_api_base_url(hostname: str) -> str:
    """``api.github.com`` for github.com, ``https://{hostname}/api/v3`` for GitHub Enterprise."""
    if hostname == GITHUB_HOSTNAME:
        return "https://api.github.com"
    return f"https://{hostname}/api/v3"


def _check_name(value: str, what: str, spec: str) -> None:
    if not _NAME.fullmatch(value) or value in {".", ".."}:
        raise SpecError(
            f"{what} {value!r} in {spec!r} may only have letters, digits, '-', '_' and '.'."
        )


class _GitHubAPI(RepoProvider):
    """Requests to the GitHub REST API: auth, conditional requests, rate limits."""

    def __init__(
        self,
        spec: str,
        *,
        hostname: str = GITHUB_HOSTNAME,
        api_base_url: str | None = None,
        access_token: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        cache: GitHubCache | None = None,
        **http: Unpack[HttpOptions],
    ) -> None:
        super().__init__(spec, **http)
        self.hostname = hostname
        self.api_base_url = (api_base_url or default_api_base_url(hostname)).rstrip("/")
        env = os.environ
        self.access_token = (
            env.get("GITHUB_ACCESS_TOKEN", "") if access_token is None else access_token
        )
        self.client_id = env.get("GITHUB_CLIENT_ID", "") if client_id is None else client_id
        self.client_secret = (
            env.get("GITHUB_CLIENT_SECRET", "") if client_secret is None else client_secret
        )
        self.cache = cache if cache is not None else GitHubCache()

    @property
    def git_credentials(self) -> str:
        if not self.access_token:
            return ""
        if self.client_id:
            # with an OAuth app, the token is a personal access token of client_id's user
            return f"username={self.client_id}\npassword={self.access_token}"
        return f"username={self.access_token}\npassword=x-oauth-basic"

    async def _api_get(self, url: str, etag: str | None = None) -> HttpResponse:
        """GET a GitHub API URL; 200, 304 and 404/422 come back, the rest raises."""
        headers = {"Accept": "application/vnd.github+json"}
        if self.access_token:
            headers["Authorization"] = f"token {self.access_token}"
        elif self.client_id and self.client_secret:
            # an OAuth app's id and secret raise the rate limit for public data
            pair = f"{self.client_id}:{self.client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        if etag:
            headers["If-None-Match"] = etag
        response = await self._get(url, headers)
        self._record_rate_limit(response.headers)
        if response.status in (200, 304, 404, 422):
            # 422: "No commit found for SHA", GitHub's answer for a ref that does not exist
            return response
        if response.status in (403, 429):
            self._raise_if_rate_limited(response)
        message = _github_message(response)
        if response.status == 401:
            raise ProviderUnavailable(
                f"GitHub rejected the configured credentials: {message}",
                user_message=login_refused_message(self.hostname, "GitHub"),
            )
        if response.status in (403, 451):
            # what is left of 403 here is "Repository access blocked" (terms of service, DMCA)
            raise RefNotFound(f"GitHub refused access to {self.key}: {message}")
        raise answered_status("GitHub", response.status, url, message)

    async def _lookup(
        self,
        url: str,
        answers: EtagCache[T],
        extract: Callable[[Any], T],
        what: str,
        missing: Callable[[], RefNotFound],
    ) -> T:
        """What ``extract`` reads from ``url``, asked conditionally on the ETag ``answers`` keeps.

        An unchanged answer (304) costs no rate-limit quota. 404 and 422 raise ``missing()`` and
        are remembered for a while; an answer ``extract`` cannot read came "without ``what``".
        """
        cached = answers.get(url)
        if cached is None and url in self.cache.not_found:
            raise missing()
        response = await self._api_get(url, etag=cached.etag if cached else None)
        if response.status == 304 and cached is not None:
            return cached.value
        if response.status in (404, 422):
            answers.discard(url)
            self.cache.not_found.add(url)
            raise missing()
        data = response.json("GitHub")
        try:
            value = extract(data)
        except (KeyError, TypeError, ValueError) as e:
            raise unexpected("GitHub", url, f"without {what}") from e
        etag = response.headers.get("ETag")
        if etag:
            answers.set(url, etag, value)
        return value

    def _record_rate_limit(self, headers: Mapping[str, str]) -> None:
        try:
            self.cache.rate_limit = RateLimit(
                limit=int(headers["X-RateLimit-Limit"]),
                remaining=int(headers["X-RateLimit-Remaining"]),
                reset=float(headers["X-RateLimit-Reset"]),
            )
        except (KeyError, ValueError):
            pass

    def _raise_if_rate_limited(self, response: HttpResponse) -> None:
        headers = response.headers
        if headers.get("X-RateLimit-Remaining") == "0":
            try:
                wait = float(headers["X-RateLimit-Reset"]) - self.cache.clock()
            except (KeyError, ValueError):
                wait = 60.0
        elif headers.get("Retry-After", "").isdigit():
            # secondary rate limits say how long to wait in Retry-After
            wait = retry_after(headers)
        elif response.status == 429:
            wait = 60.0
        else:
            return
        raise rate_limit_exceeded("GitHub", wait)

    def _repo_path(self, *parts: str) -> str:
        return "/".join(quote(p, safe="") for p in parts)


def _github_message(response: HttpResponse) -> str:
    try:
        data: Any = response.json("GitHub")
    except ProviderUnavailable:
        return response.body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        return str(data.get("message", ""))[:200]
    return ""


class GitHubRepoProvider(_GitHubAPI):
    """``gh/{user}/{repo}/{ref}``; the ref may contain ``/``, a ``.git`` on the repo is dropped."""

    prefix: ClassVar[str] = "gh"
    name: ClassVar[str] = "GitHub"
    labels, display_config = launch_form(
        "gh",
        "GitHub",
        label="GitHub repository name or URL",
        placeholder="example: binder-examples/requirements or "
        "https://github.com/binder-examples/requirements",
        validate_regex=r"[^/]+/[^/]+/.+",
        detect_regex="^(https?://github.com/)?(?<repo>.*[^/])/?",
    )

    def __init__(
        self,
        spec: str,
        *,
        hostname: str = GITHUB_HOSTNAME,
        api_base_url: str | None = None,
        **options: Unpack[GitHubOptions],
    ) -> None:
        super().__init__(spec, hostname=hostname, api_base_url=api_base_url, **options)
        parts = spec.split("/", 2)
        if len(parts) != 3 or not all(parts):
            message = f'Spec is not of the form "user/repo/ref", provided: "{spec}".'
            if len(parts) == 2 and all(parts) and parts[1] not in {"main", "master", "HEAD"}:
                message += f' Did you mean "{spec}/HEAD"?'
            raise SpecError(message)
        self.user, repo, self.unresolved_ref = parts
        self.repo = repo.removesuffix(".git")
        _check_name(self.user, "User", spec)
        _check_name(self.repo, "Repository", spec)
        check_ref(self.unresolved_ref)

    def get_repo_url(self) -> str:
        return f"https://{self.hostname}/{self.user}/{self.repo}"

    def get_build_slug(self) -> str:
        return f"{self.user}-{self.repo}"

    def _resolved_spec(self, resolved_ref: str) -> str:
        return f"{self.user}/{self.repo}/{resolved_ref}"

    def _ref_url(self, resolved_ref: str) -> str:
        return f"https://{self.hostname}/{self.user}/{self.repo}/tree/{resolved_ref}"

    async def _resolve(self) -> str:
        url = "{}/repos/{}/commits/{}".format(
            self.api_base_url,
            self._repo_path(self.user, self.repo),
            quote(self.unresolved_ref, safe="/"),
        )
        return await self._lookup(url, self.cache.refs, _commit_sha, "a commit sha", self._missing)

    def _missing(self) -> RefNotFound:
        tip = ""
        if self.unresolved_ref in {"master", "main"}:
            tip = "Tip: HEAD will always resolve to a repository's default branch."
            if self.unresolved_ref == "master":
                tip = f'GitHub has changed default branches from "master" to "main". {tip}'
        return self._not_found(tip)


class GistRepoProvider(_GitHubAPI):
    """``gist/{user}/{gist_id}[/{ref}]``: the latest revision, or one revision of its history."""

    prefix: ClassVar[str] = "gist"
    name: ClassVar[str] = "Gist"
    labels, display_config = launch_form(
        "gist",
        "GitHub Gist",
        label="Gist ID (username/gistId) or URL",
        tag_text="Git commit SHA",
        placeholder="",
        validate_regex=r"[^/]+/[^/]+(/[^/]+)?",
        detect_regex="^(https?://gist.github.com/)?(?<repo>.*[^/])/?",
    )

    def __init__(
        self,
        spec: str,
        *,
        hostname: str = GIST_HOSTNAME,
        api_base_url: str | None = None,
        allow_secret_gist: bool = False,
        **options: Unpack[GitHubOptions],
    ) -> None:
        super().__init__(
            spec,
            hostname=hostname,
            api_base_url=api_base_url or default_api_base_url(GITHUB_HOSTNAME),
            **options,
        )
        self.allow_secret_gist = allow_secret_gist
        parts = spec.split("/")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise SpecError(
                f'Spec is not of the form "user/gist_id" or "user/gist_id/ref", provided: "{spec}".'
            )
        self.user, self.gist_id = parts[0], parts[1]
        self.unresolved_ref = parts[2] if len(parts) == 3 else ""
        _check_name(self.user, "User", spec)
        if not _GIST_ID.fullmatch(self.gist_id):
            raise SpecError(f"Gist id {self.gist_id!r} may only have letters and digits.")
        if self.unresolved_ref not in _GIST_HEAD_ALIASES:
            check_ref(self.unresolved_ref)

    def get_repo_url(self) -> str:
        return f"https://{self.hostname}/{self.user}/{self.gist_id}.git"

    def get_build_slug(self) -> str:
        return self.gist_id

    def _resolved_spec(self, resolved_ref: str) -> str:
        return f"{self.user}/{self.gist_id}/{resolved_ref}"

    def _ref_url(self, resolved_ref: str) -> str:
        return f"https://{self.hostname}/{self.user}/{self.gist_id}/{resolved_ref}"

    async def _resolve(self) -> str:
        info = await self._gist_info()
        if not info.public and not self.allow_secret_gist:
            raise SpecError(
                "You seem to want to use a secret Gist, but this Binder does not allow them."
            )
        if not info.versions:
            raise self._not_found("The gist has no revisions.")
        if self.unresolved_ref in _GIST_HEAD_ALIASES:
            return info.versions[0]
        if self.unresolved_ref not in info.versions:
            raise self._not_found("Gist refs must be a full revision sha or HEAD.")
        return self.unresolved_ref

    async def _gist_info(self) -> GistInfo:
        url = f"{self.api_base_url}/gists/{quote(self.gist_id, safe='')}"
        return await self._lookup(url, self.cache.gists, _gist, "a gist history", self._not_found)


def _commit_sha(data: Any) -> str:
    sha = data.get("sha") if isinstance(data, dict) else None
    if not isinstance(sha, str) or not is_full_sha(sha):
        raise ValueError(f"not a full commit sha: {sha!r}")
    return sha


def _gist(data: Any) -> GistInfo:
    return GistInfo(
        public=bool(data["public"]),
        versions=tuple(str(entry["version"]) for entry in data["history"]),
    )
