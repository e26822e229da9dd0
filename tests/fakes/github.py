"""A fake GitHub REST API: commits and gists, ETags, and rate-limit quota like the real one.

Quota follows GitHub's rules: every answer carries ``X-RateLimit-*`` headers, a 304 for a
conditional request costs nothing, and with no quota left the answer is 403 with
``X-RateLimit-Remaining: 0``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class FakeGist:
    versions: list[str]
    public: bool = True


@dataclass
class FakeGitHub:
    """Serves ``/repos/{owner}/{repo}/commits/{ref}`` and ``/gists/{id}`` under ``prefix``."""

    prefix: str = ""
    quota: int = 60
    repos: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    gists: dict[str, FakeGist] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    #: answer every request with this status (and GitHub's error body) when set
    fail_with: int | None = None
    #: answer 403 with this Retry-After, as GitHub's secondary rate limit does
    secondary_retry_after: int | None = None

    def __post_init__(self) -> None:
        self.remaining = self.quota
        self.reset = int(time.time()) + 3600

    def add_repo(self, owner: str, repo: str, refs: dict[str, str]) -> None:
        self.repos[(owner.lower(), repo.lower())] = dict(refs)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(self.prefix + "/repos/{owner}/{repo}/commits/{ref:.+}", self._commit)
        app.router.add_get(self.prefix + "/gists/{gist_id}", self._gist)
        return app

    def statuses(self) -> list[int]:
        return [r.status for r in self.requests]

    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.quota),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }

    def _answer(
        self,
        request: web.Request,
        payload: object | None,
        etag: str | None = None,
        missing: tuple[int, str] = (404, "Not Found"),
    ) -> web.Response:
        seen = SeenRequest(request.path, dict(request.headers))
        self.requests.append(seen)
        status, body, headers = self._decide(request, payload, etag, missing)
        seen.status = status
        if status == 304:
            return web.Response(status=304, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    def _decide(
        self,
        request: web.Request,
        payload: object | None,
        etag: str | None,
        missing: tuple[int, str],
    ) -> tuple[int, object, dict[str, str]]:
        if self.fail_with is not None:
            return self.fail_with, {"message": "Server Error"}, self._rate_headers()
        if self.secondary_retry_after is not None:
            headers = {**self._rate_headers(), "Retry-After": str(self.secondary_retry_after)}
            return 403, {"message": "You have exceeded a secondary rate limit."}, headers
        if self.remaining <= 0:
            return 403, {"message": "API rate limit exceeded"}, self._rate_headers()
        if etag is not None and request.headers.get("If-None-Match") == etag:
            return 304, None, {**self._rate_headers(), "ETag": etag}
        self.remaining -= 1
        if payload is None:
            return missing[0], {"message": missing[1]}, self._rate_headers()
        headers = self._rate_headers()
        if etag is not None:
            headers["ETag"] = etag
        return 200, payload, headers

    async def _commit(self, request: web.Request) -> web.Response:
        owner, repo, ref = (request.match_info[k] for k in ("owner", "repo", "ref"))
        refs = self.repos.get((owner.lower(), repo.lower()))
        if refs is None:
            return self._answer(request, None)
        sha = refs.get(ref)
        if sha is None and re.fullmatch(r"[0-9a-f]{40}", ref) and ref in refs.values():
            sha = ref
        if sha is None:
            return self._answer(request, None, missing=(422, f"No commit found for SHA: {ref}"))
        return self._answer(request, {"sha": sha, "commit": {}}, etag=f'W/"etag-{sha}"')

    async def _gist(self, request: web.Request) -> web.Response:
        gist = self.gists.get(request.match_info["gist_id"])
        if gist is None:
            return self._answer(request, None)
        payload = {
            "id": request.match_info["gist_id"],
            "public": gist.public,
            "history": [{"version": v} for v in gist.versions],
        }
        return self._answer(request, payload, etag=f'"gist-{"-".join(gist.versions)}"')
