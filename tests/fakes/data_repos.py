"""Fakes of doi.org and of the data repositories' APIs, all on one in-process server.

Paths are the real services' paths, so a provider pointed at the server's URL (as a DOI
resolver, Figshare API, HydroShare or CKAN site) talks to it as it would to the real thing:

    /doi/{doi}                                  302 to where the DOI leads (a path here)
    /records/.., /articles/.., /*.xhtml         landing pages (200, HTML)
    /v2/articles/{id}/versions                  Figshare versions
    /api/datasets/:persistentId?persistentId=   Dataverse dataset
    /hsapi/resource/{id}/scimeta/elements       HydroShare science metadata
    {prefix}/api/3/action/package_show?id=      CKAN dataset (and activity_data_show)

JSON answers carry an ETag and honour If-None-Match, as the real APIs may.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Seen:
    path_qs: str
    status: int
    headers: dict[str, str]


@dataclass
class FakeDataRepos:
    #: DOI -> path (with query) it redirects to on this server
    dois: dict[str, str] = field(default_factory=dict)
    #: Figshare article id -> version numbers
    figshare_versions: dict[str, list[int]] = field(default_factory=dict)
    #: "doi:{doi}" -> the ``data`` object of Dataverse's answer
    dataverse: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: HydroShare resource id -> ``modified`` start_date
    hydroshare_modified: dict[str, str] = field(default_factory=dict)
    #: HydroShare resource ids that are private (403)
    hydroshare_private: set[str] = field(default_factory=set)
    #: CKAN site path prefix ("" or "/data") -> dataset name or activity id -> metadata_modified
    ckan: dict[str, dict[str, str]] = field(default_factory=dict)
    #: when set, every API answer (not the DOI resolver) is this status
    fail_with: int | None = None
    requests: list[Seen] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/doi/{doi:.+}", self._doi)
        app.router.add_get("/records/{id}", self._landing)
        app.router.add_get("/articles/{id}", self._landing)
        app.router.add_get("/articles/{id}/{version}", self._landing)
        app.router.add_get("/dataset.xhtml", self._landing)
        app.router.add_get("/file.xhtml", self._landing)
        app.router.add_get("/resource/{id}", self._landing)
        app.router.add_get("/v2/articles/{id}/versions", self._figshare)
        app.router.add_get("/api/datasets/:persistentId", self._dataverse)
        app.router.add_get("/hsapi/resource/{id}/scimeta/elements", self._hydroshare)
        app.router.add_get("/{prefix:.*}api/3/action/{action}", self._ckan)
        return app

    def paths(self) -> list[str]:
        return [seen.path_qs for seen in self.requests]

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as e:
            self.requests.append(Seen(request.path_qs, e.status, dict(request.headers)))
            raise
        self.requests.append(Seen(request.path_qs, response.status, dict(request.headers)))
        return response

    async def _doi(self, request: web.Request) -> web.Response:
        target = self.dois.get(request.match_info["doi"])
        if target is None:
            return web.Response(status=404, text="DOI Not Found", content_type="text/html")
        raise web.HTTPFound(target)

    async def _landing(self, request: web.Request) -> web.Response:
        return web.Response(text="<html>a landing page</html>", content_type="text/html")

    def _json(self, request: web.Request, body: Any) -> web.Response:
        text = json.dumps(body)
        etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response(text=text, headers={"ETag": etag})

    def _failing(self) -> web.Response | None:
        if self.fail_with is None:
            return None
        headers = {"Retry-After": "120"} if self.fail_with == 429 else {}
        return web.json_response({"message": "failing"}, status=self.fail_with, headers=headers)

    async def _figshare(self, request: web.Request) -> web.Response:
        failing = self._failing()
        if failing is not None:
            return failing
        versions = self.figshare_versions.get(request.match_info["id"])
        if versions is None:
            return web.json_response({"message": "Entity not found: article"}, status=404)
        return self._json(request, [{"version": v, "url": f"/v/{v}"} for v in versions])

    async def _dataverse(self, request: web.Request) -> web.Response:
        failing = self._failing()
        if failing is not None:
            return failing
        data = self.dataverse.get(request.query.get("persistentId", ""))
        if data is None:
            return web.json_response({"status": "ERROR", "message": "not found"}, status=404)
        return self._json(request, {"status": "OK", "data": data})

    async def _hydroshare(self, request: web.Request) -> web.Response:
        failing = self._failing()
        if failing is not None:
            return failing
        resource_id = request.match_info["id"]
        if resource_id in self.hydroshare_private:
            return web.json_response({"detail": "not permitted"}, status=403)
        modified = self.hydroshare_modified.get(resource_id)
        if modified is None:
            return web.json_response({"detail": "No resource was found"}, status=404)
        dates = [
            {"type": "created", "start_date": "2001-01-01T00:00:00.000000Z"},
            {"type": "modified", "start_date": modified},
        ]
        return self._json(request, {"title": "a resource", "dates": dates})

    async def _ckan(self, request: web.Request) -> web.Response:
        failing = self._failing()
        if failing is not None:
            return failing
        site = self.ckan.get(("/" + request.match_info["prefix"]).rstrip("/"))
        action = request.match_info["action"]
        if site is None or action not in ("package_show", "activity_data_show"):
            return web.json_response({"success": False}, status=404)
        if action == "activity_data_show" and request.query.get("object_type") != "package":
            return web.json_response({"success": False}, status=400)
        modified = site.get(request.query.get("id", ""))
        if modified is None:
            error = {"message": "Not found", "__type": "Not Found Error"}
            return web.json_response({"success": False, "error": error}, status=404)
        return self._json(request, {"success": True, "result": {"metadata_modified": modified}})
