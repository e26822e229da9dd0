"""A fake GitLab API: ``/api/v4/projects/{url-escaped path}/repository/commits/{ref}``."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class FakeGitLab:
    projects: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    #: when set, refuse every request with 429 and this Retry-After
    retry_after: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v4/projects/{project}/repository/commits/{ref}", self._commit)
        return app

    async def _commit(self, request: web.Request) -> web.Response:
        self.requests.append((request.raw_path, dict(request.headers)))
        if self.retry_after is not None:
            return web.json_response(
                {"message": "Retry later"},
                status=429,
                headers={"Retry-After": str(self.retry_after)},
            )
        refs = self.projects.get(request.match_info["project"])
        sha = refs.get(request.match_info["ref"]) if refs is not None else None
        if sha is None:
            return web.json_response({"message": "404 Commit Not Found"}, status=404)
        return web.json_response({"id": sha, "short_id": sha[:8], "title": "a commit"})
