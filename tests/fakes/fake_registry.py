"""An in-process registry speaking the Docker Registry HTTP API v2, for tests.

It behaves like Distribution 2.8 where a client can get it wrong:

* content negotiation: a Docker schema 2 manifest is down-converted to schema 1 (with another
  digest) unless ``Accept`` names the Docker type; an OCI manifest or index is 404 unless its
  type is accepted; a Docker manifest list resolves to its linux/amd64 image unless a list
  type is accepted;
* auth: anonymous, ``Basic``, or bearer tokens from its own ``/token`` realm, with the
  challenge and scope strings Distribution sends (``repository:NAME:pull``, ``...:delete``);
* deletion by digest only, ``405 UNSUPPORTED`` when deletion is disabled.

Tests drive it through attributes: ``head_allowed``, ``fail_status``, ``revoke_tokens()``,
``hold()``/``release()`` to keep requests waiting, and they read ``requests`` and
``token_requests`` to count round trips.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

AuthMode = Literal["anonymous", "basic", "bearer"]
ImageKind = Literal["docker", "oci", "docker-list", "oci-index"]
HoldTarget = Literal["manifests", "token"]

SERVICE = "fake-registry"


@dataclass(frozen=True)
class Manifest:
    media_type: str
    body: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    accept: str
    authorization: str


@dataclass(frozen=True)
class TokenRequest:
    scopes: tuple[str, ...]
    service: str
    account: str
    token: str | None


@dataclass
class _Repository:
    by_reference: dict[str, Manifest] = field(default_factory=dict)


class FakeRegistry:
    def __init__(
        self,
        *,
        auth: AuthMode = "anonymous",
        username: str | None = None,
        password: str | None = None,
        token_lifetime: float | None = 300,
        allowed_actions: frozenset[str] = frozenset({"pull", "push", "delete"}),
        page_size: int | None = None,
    ) -> None:
        self.auth = auth
        self.username = username
        self.password = password
        #: ``expires_in`` of issued tokens; None leaves it out, as some token services do.
        self.token_lifetime = token_lifetime
        #: Actions the token service grants; anything else gets ``insufficient_scope``.
        self.allowed_actions = allowed_actions
        #: Paginate tag lists at this size even when the client sends no ``n``.
        self.page_size = page_size
        self.head_allowed = True
        self.delete_enabled = True
        #: When set, every /v2/ request answers this status.
        self.fail_status: int | None = None

        self.requests: list[RecordedRequest] = []
        self.token_requests: list[TokenRequest] = []
        self.arrived: dict[HoldTarget, asyncio.Event] = {
            "manifests": asyncio.Event(),
            "token": asyncio.Event(),
        }
        self._gates: dict[HoldTarget, asyncio.Event] = {}
        self._repositories: dict[str, _Repository] = {}
        self._tokens: dict[str, frozenset[str]] = {}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v2/", self._ping)
        app.router.add_get("/token", self._token)
        app.router.add_get("/v2/{name:.+}/tags/list", self._tags)
        manifests = "/v2/{name:.+}/manifests/{reference}"
        app.router.add_get(manifests, self._get_manifest, allow_head=False)
        app.router.add_route("HEAD", manifests, self._get_manifest)
        app.router.add_delete(manifests, self._delete_manifest)
        return app

    # -- test controls ---------------------------------------------------------------------

    def push(self, name: str, tag: str, kind: ImageKind = "docker") -> str:
        """Store an image under ``name:tag``; returns the digest a correct client sees."""
        repo = self._repositories.setdefault(name, _Repository())
        if kind in ("docker", "oci"):
            manifest = _image_manifest(
                DOCKER_MANIFEST_V2 if kind == "docker" else OCI_MANIFEST, tag
            )
        else:
            child_type = DOCKER_MANIFEST_V2 if kind == "docker-list" else OCI_MANIFEST
            children = [
                (arch, _image_manifest(child_type, f"{tag}-{arch}")) for arch in ("arm64", "amd64")
            ]
            for _, child in children:
                repo.by_reference[child.digest] = child
            manifest = _index_manifest(
                DOCKER_MANIFEST_LIST if kind == "docker-list" else OCI_INDEX, children
            )
        repo.by_reference[manifest.digest] = manifest
        repo.by_reference[tag] = manifest
        return manifest.digest

    def tags(self, name: str) -> list[str]:
        repo = self._repositories.get(name)
        if repo is None:
            return []
        return sorted(ref for ref in repo.by_reference if not ref.startswith("sha256:"))

    def revoke_tokens(self) -> None:
        self._tokens.clear()

    @property
    def issued_tokens(self) -> list[str]:
        return [t.token for t in self.token_requests if t.token is not None]

    def hold(self, target: HoldTarget) -> None:
        """Keep requests to ``target`` waiting until :meth:`release`."""
        self._gates[target] = asyncio.Event()

    def release(self, target: HoldTarget) -> None:
        self._gates.pop(target).set()

    def count(self, method: str | None = None, path: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path == path)
        )

    # -- handlers --------------------------------------------------------------------------

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=request.query_string,
                accept=",".join(request.headers.getall("Accept", [])),
                authorization=request.headers.get("Authorization", ""),
            )
        )
        if self.fail_status is not None and request.path.startswith("/v2/"):
            return _errors(self.fail_status, "UNAVAILABLE", "the fake is told to fail")
        return await handler(request)

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        if denied := self._authorize(request, None, ()):
            return denied
        return web.json_response({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})

    async def _get_manifest(self, request: web.Request) -> web.StreamResponse:
        await self._wait("manifests")
        name, reference = request.match_info["name"], request.match_info["reference"]
        if denied := self._authorize(request, name, ("pull",)):
            return denied
        if request.method == "HEAD" and not self.head_allowed:
            return web.Response(status=405)
        manifest = self._repositories.get(name, _Repository()).by_reference.get(reference)
        if manifest is None:
            return _errors(404, "MANIFEST_UNKNOWN", "manifest unknown")
        served = self._negotiate(name, reference, manifest, _accepted(request))
        if served is None:
            return _errors(404, "MANIFEST_UNKNOWN", "accept header does not allow this manifest")
        return web.Response(
            body=served.body,
            headers={"Content-Type": served.media_type, "Docker-Content-Digest": served.digest},
        )

    async def _delete_manifest(self, request: web.Request) -> web.StreamResponse:
        name, reference = request.match_info["name"], request.match_info["reference"]
        if denied := self._authorize(request, name, ("delete",)):
            return denied
        if not self.delete_enabled:
            return _errors(405, "UNSUPPORTED", "The operation is unsupported.")
        if not reference.startswith("sha256:"):
            return _errors(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        repo = self._repositories.get(name)
        if repo is None or reference not in repo.by_reference:
            return _errors(404, "MANIFEST_UNKNOWN", "manifest unknown")
        for ref in [r for r, m in repo.by_reference.items() if m.digest == reference]:
            del repo.by_reference[ref]
        return web.Response(status=202)

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if denied := self._authorize(request, name, ("pull",)):
            return denied
        if name not in self._repositories:
            return _errors(404, "NAME_UNKNOWN", "repository name not known to registry")
        tags = self.tags(name)
        last = request.query.get("last")
        if last is not None:
            tags = [t for t in tags if t > last]
        size = int(request.query["n"]) if "n" in request.query else self.page_size
        headers = {}
        if size is not None and len(tags) > size:
            tags = tags[:size]
            headers["Link"] = f'</v2/{name}/tags/list?last={tags[-1]}&n={size}>; rel="next"'
        return web.json_response({"name": name, "tags": tags}, headers=headers)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        await self._wait("token")
        scopes = tuple(request.query.getall("scope", []))
        record = TokenRequest(
            scopes=scopes,
            service=request.query.get("service", ""),
            account=request.query.get("account", ""),
            token=None,
        )
        if self.username is not None and not self._basic_ok(request):
            self.token_requests.append(record)
            return _errors(401, "UNAUTHORIZED", "authentication required")
        token = secrets.token_urlsafe(16)
        granted = set()
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            granted |= {
                f"{kind}:{name}:{a}" for a in actions.split(",") if a in self.allowed_actions
            }
        self._tokens[token] = frozenset(granted)
        self.token_requests.append(
            TokenRequest(record.scopes, record.service, record.account, token)
        )
        body: dict[str, object] = {"token": token, "access_token": token}
        if self.token_lifetime is not None:
            body["expires_in"] = self.token_lifetime
        return web.json_response(body)

    # -- internals -------------------------------------------------------------------------

    async def _wait(self, target: HoldTarget) -> None:
        self.arrived[target].set()
        gate = self._gates.get(target)
        if gate is not None:
            await gate.wait()

    def _basic_ok(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return request.headers.get("Authorization") == f"Basic {expected}"

    def _authorize(
        self, request: web.Request, name: str | None, actions: tuple[str, ...]
    ) -> web.Response | None:
        if self.auth == "anonymous":
            return None
        if self.auth == "basic":
            if self._basic_ok(request):
                return None
            return _errors(
                401,
                "UNAUTHORIZED",
                "authentication required",
                {"WWW-Authenticate": f'Basic realm="{SERVICE}"'},
            )
        needed = {f"repository:{name}:{a}" for a in actions}
        header = request.headers.get("Authorization", "")
        granted = self._tokens.get(header.removeprefix("Bearer ")) if header else None
        if granted is not None and needed <= granted:
            return None
        realm = request.url.origin().with_path("/token")
        challenge = f'Bearer realm="{realm}",service="{SERVICE}"'
        if needed:
            challenge += f',scope="repository:{name}:{",".join(actions)}"'
        if granted is not None:
            challenge += ',error="insufficient_scope"'
        return _errors(
            401, "UNAUTHORIZED", "authentication required", {"WWW-Authenticate": challenge}
        )

    def _negotiate(
        self, name: str, reference: str, manifest: Manifest, accepted: set[str]
    ) -> Manifest | None:
        if manifest.media_type == OCI_INDEX:
            return manifest if OCI_INDEX in accepted else None
        if manifest.media_type == DOCKER_MANIFEST_LIST:
            if DOCKER_MANIFEST_LIST in accepted or OCI_INDEX in accepted:
                return manifest
            # Distribution serves the linux/amd64 image to clients that cannot read lists.
            entries = json.loads(manifest.body)["manifests"]
            digest = next(e["digest"] for e in entries if e["platform"]["architecture"] == "amd64")
            manifest = self._repositories[name].by_reference[digest]
        if manifest.media_type == OCI_MANIFEST:
            return manifest if OCI_MANIFEST in accepted else None
        if DOCKER_MANIFEST_V2 in accepted:
            return manifest
        return _schema1(name, reference)


def _accepted(request: web.Request) -> set[str]:
    # Like Distribution: every Accept header, each split on ",", parameters dropped.
    return {
        part.split(";", 1)[0].strip()
        for value in request.headers.getall("Accept", [])
        for part in value.split(",")
    }


def _errors(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"errors": [{"code": code, "message": message}]}, status=status, headers=headers
    )


def _image_manifest(media_type: str, seed: str) -> Manifest:
    layer = "sha256:" + hashlib.sha256(seed.encode()).hexdigest()
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 2,
            "digest": layer,
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": 1,
                "digest": layer,
            }
        ],
    }
    return Manifest(media_type, json.dumps(body, indent=3).encode())


def _index_manifest(media_type: str, children: list[tuple[str, Manifest]]) -> Manifest:
    body = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": child.media_type,
                "digest": child.digest,
                "size": len(child.body),
                "platform": {"architecture": arch, "os": "linux"},
            }
            for arch, child in children
        ],
    }
    return Manifest(media_type, json.dumps(body, indent=3).encode())


def _schema1(name: str, tag: str) -> Manifest:
    body = {
        "schemaVersion": 1,
        "name": name,
        "tag": tag,
        "architecture": "amd64",
        "fsLayers": [],
        "history": [],
        "signatures": [],
    }
    return Manifest(DOCKER_MANIFEST_V1_SIGNED, json.dumps(body, indent=3).encode())
