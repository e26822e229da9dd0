"""Docker Registry HTTP API v2 client: does an image exist, its digest, its tags, deletion.

One :class:`RegistryClient` talks to one registry. It authenticates the way ``docker`` does:
anonymously until the registry answers 401, then with basic credentials or a bearer token
from the realm named in the ``WWW-Authenticate`` challenge. Tokens are cached per scope
until shortly before they expire, positive manifest answers for ``positive_cache_seconds``
(negative ones never: a build may push the image a moment later), and concurrent identical
lookups share one request.

Every failure leaves as :class:`~swarmbinder.errors.RegistryError`; its message names the
registry and never contains a password or token. A malformed image name or tag is a caller
bug and raises :class:`ValueError`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Literal, Self, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from swarmbinder.errors import RegistryError

log = logging.getLogger(__name__)

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

#: Docker types first: Distribution 2.8 down-converts a schema 2 manifest to schema 1 (another
#: digest) unless the Docker type is accepted, and 404s an OCI manifest unless OCI is accepted.
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX])

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10, sock_read=20)

#: The distribution spec's default when a token response has no ``expires_in``.
DEFAULT_TOKEN_LIFETIME = 60.0
#: A token is refreshed this long (at most half its lifetime) before it expires, so a request
#: never leaves with a token that dies in flight.
TOKEN_REFRESH_MARGIN = 10.0
#: Bound on remembered positive manifest answers; expired ones are dropped first.
MAX_CACHED_MANIFESTS = 4096

# Grammar from the distribution reference package.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[A-Fa-f0-9]{32,}")
_MAX_REPOSITORY_LENGTH = 255

_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_LOOPBACK_HOSTS = ("localhost", "127.", "[::1]")

_CHALLENGE_PARAM_RE = re.compile(r'([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))')

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    next_link: URL | None


@dataclass(frozen=True)
class _Manifest:
    digest: str
    media_type: str


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float


@dataclass(frozen=True)
class _Challenge:
    scheme: str
    params: Mapping[str, str]


@dataclass(frozen=True)
class _Auth:
    kind: Literal["none", "basic", "bearer"]
    header: str | None = None


_NO_AUTH = _Auth("none")


class _SingleFlight(Generic[K, V]):
    """Concurrent calls with the same key share one task; its result goes to every caller.

    Each caller waits through ``shield``, so a caller that is cancelled does not cancel the
    work the others are waiting for.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[V]]) -> V:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            task.add_done_callback(partial(self._forget, key))
        return await asyncio.shield(task)

    def _forget(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # every waiter may have gone; mark the exception as seen

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class RegistryClient:
    """Client for one registry's v2 API.

    ``url`` is the registry's base URL (``https://registry.example.org``). A bare
    ``host:port`` is accepted too: plain HTTP for loopback hosts, HTTPS otherwise, as
    ``docker`` assumes. Pass ``session`` to share a ``ClientSession`` (it is not closed
    here); otherwise the client opens its own on first use and ``aclose`` closes it.
    ``username`` and ``password`` go together and are only sent when the registry asks.
    ``image_hosts`` are other names of this registry in image names: the nodes may push to
    ``127.0.0.1:5050/...`` while we reach the same registry as ``http://registry:5000``.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        session: aiohttp.ClientSession | None = None,
        positive_cache_seconds: float = 30,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        image_hosts: Iterable[str] = (),
        token_source: Callable[[list[str]], tuple[str, float]] | None = None,
    ) -> None:
        """``token_source``, given the scopes a bearer challenge names, returns a token and its
        lifetime: Binder, the registry's token issuer, signs its own instead of calling the
        realm over HTTP."""
        if (username is None) != (password is None):
            raise ValueError("registry username and password must be given together")
        if username is not None and ":" in username:
            raise ValueError("a registry username cannot contain ':'")
        self._base = _parse_base_url(url)
        self.url = str(self._base).rstrip("/")
        self.username = username
        self._basic_header = (
            _basic_authorization(username, password)
            if username is not None and password is not None
            else None
        )
        self._token_source = token_source
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self._positive_cache_seconds = positive_cache_seconds
        self._timeout = timeout
        self._clock = clock
        self._host_aliases = _host_aliases(self._base) | {h.lower() for h in image_hosts}
        self._is_docker_hub = bool(self._host_aliases & _DOCKER_HUB_HOSTS)

        self._basic_wanted = False  # the registry answered a Basic challenge before
        self._head_refused = False
        self._tokens: dict[str, _Token] = {}
        self._manifests: dict[tuple[str, str], tuple[float, _Manifest]] = {}
        self._manifest_flights: _SingleFlight[tuple[str, str], _Manifest | None] = _SingleFlight()
        self._token_flights: _SingleFlight[str, str] = _SingleFlight()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel lookups in flight and close the session if this client opened it."""
        if self._closed:
            return
        self._closed = True
        await self._manifest_flights.cancel_all()
        await self._token_flights.cancel_all()
        if self._owns_session and self._session is not None:
            await self._session.close()

    # -- public API ------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the registry answers ``/v2/`` and accepts our credentials."""
        reply = await self._send("GET", self._url("/v2/"), scope="")
        if reply.status == 200:
            return
        if reply.status == 404:
            raise self._error(f"registry {self.url} does not serve the registry v2 API at /v2/")
        raise self._unexpected(reply, "GET", "/v2/")

    async def manifest_exists(self, image: str, tag: str) -> bool:
        """Whether ``image:tag`` is in the registry.

        ``image`` is a repository path (``binder/repo-abc``) or a full name whose host is
        this registry (``127.0.0.1:5000/binder/repo-abc``); ``tag`` may also be a digest.
        """
        return await self._lookup(image, tag) is not None

    async def get_manifest_digest(self, image: str, tag: str) -> str | None:
        """The manifest digest (``sha256:...``) of ``image:tag``, or None if it is absent."""
        manifest = await self._lookup(image, tag)
        return manifest.digest if manifest is not None else None

    async def list_tags(self, image: str) -> list[str]:
        """All tags of a repository, following pagination; [] if the repository is unknown."""
        name = self._repository(image)
        return await self._paged_list(
            self._url(f"/v2/{name}/tags/list"), "tags", _pull_scope(name), f"{name}'s tags"
        )

    async def list_repositories(self) -> list[str]:
        """Every repository in the registry (its catalog), following pagination."""
        return await self._paged_list(
            self._url("/v2/_catalog").with_query(n=1000),
            "repositories",
            "registry:catalog:*",
            "its catalog",
        )

    async def _paged_list(self, url: URL, key: str, scope: str, what: str) -> list[str]:
        items: list[str] = []
        next_url: URL | None = url
        while next_url is not None:
            reply = await self._send("GET", next_url, scope=scope)
            if reply.status == 404:
                return items
            if reply.status != 200:
                raise self._unexpected(reply, "GET", next_url.path)
            try:
                page = json.loads(reply.body)
                items.extend(str(item) for item in page.get(key) or [])
            except (ValueError, AttributeError, TypeError) as exc:
                raise self._error(f"registry {self.url} returned an unreadable {what}") from exc
            next_url = reply.next_link
            if next_url is not None and next_url.origin() != self._base.origin():
                raise self._error(f"registry {self.url} paginated {what} to another host")
        return items

    async def delete_tag(self, image: str, tag: str) -> bool:
        """Delete the manifest ``image:tag`` points to; False if it was not there.

        The v2 API deletes manifests by digest, so this removes *every* tag of ``image``
        that points to the same manifest. The registry must allow deletion
        (``REGISTRY_STORAGE_DELETE_ENABLED``), and its blobs are only freed by its own
        garbage collection.
        """
        name = self._repository(image)
        _check_reference(tag)
        manifest = await self._fetch_manifest(name, tag)
        if manifest is None:
            return False
        path = f"/v2/{name}/manifests/{manifest.digest}"
        reply = await self._send("DELETE", self._url(path), scope=_delete_scope(name))
        self._forget_repository(name)
        if reply.status in (200, 202):
            log.info("deleted %s:%s (%s) from %s", name, tag, manifest.digest, self.url)
            return True
        if reply.status == 404:
            return False
        if reply.status == 405:
            raise self._error(
                f"registry {self.url} does not allow deleting manifests"
                " (REGISTRY_STORAGE_DELETE_ENABLED is off)"
            )
        raise self._unexpected(reply, "DELETE", path)

    # -- manifests -------------------------------------------------------------------------

    async def _lookup(self, image: str, tag: str) -> _Manifest | None:
        name = self._repository(image)
        _check_reference(tag)
        key = (name, tag)
        cached = self._manifests.get(key)
        if cached is not None:
            if cached[0] > self._clock():
                return cached[1]
            del self._manifests[key]
        return await self._manifest_flights.run(key, partial(self._fetch_and_cache, name, tag))

    async def _fetch_and_cache(self, name: str, tag: str) -> _Manifest | None:
        manifest = await self._fetch_manifest(name, tag)
        if manifest is not None and self._positive_cache_seconds > 0:
            self._remember((name, tag), (self._clock() + self._positive_cache_seconds, manifest))
        return manifest

    async def _fetch_manifest(self, name: str, reference: str) -> _Manifest | None:
        path = f"/v2/{name}/manifests/{reference}"
        headers = {"Accept": MANIFEST_ACCEPT}
        if not self._head_refused:
            reply = await self._send(
                "HEAD", self._url(path), scope=_pull_scope(name), headers=headers
            )
            if reply.status in (405, 501):
                log.info("registry %s refuses HEAD; checking manifests with GET", self.url)
                self._head_refused = True
            elif reply.status == 404:
                return None
            elif reply.status != 200:
                raise self._unexpected(reply, "HEAD", path)
            elif digest := reply.headers.get("Docker-Content-Digest"):
                return _Manifest(digest, reply.headers.get("Content-Type", ""))
            # else: a HEAD without the digest header; GET it and hash the body.
        reply = await self._send("GET", self._url(path), scope=_pull_scope(name), headers=headers)
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise self._unexpected(reply, "GET", path)
        digest = reply.headers.get("Docker-Content-Digest") or (
            "sha256:" + hashlib.sha256(reply.body).hexdigest()
        )
        return _Manifest(digest, reply.headers.get("Content-Type", ""))

    def _remember(self, key: tuple[str, str], entry: tuple[float, _Manifest]) -> None:
        if len(self._manifests) >= MAX_CACHED_MANIFESTS:
            now = self._clock()
            for old in [k for k, (until, _) in self._manifests.items() if until <= now]:
                del self._manifests[old]
            while len(self._manifests) >= MAX_CACHED_MANIFESTS:
                del self._manifests[next(iter(self._manifests))]
        self._manifests[key] = entry

    def _forget_repository(self, name: str) -> None:
        for key in [k for k in self._manifests if k[0] == name]:
            del self._manifests[key]

    # -- authentication --------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        scope: str,
        headers: Mapping[str, str] | None = None,
    ) -> _Reply:
        """One request, authenticated as the registry demands; 401 after a retry raises."""
        sent = self._auth_for(scope)
        reply = await self._raw(method, url, _with_auth(headers, sent))
        if reply.status != 401:
            return reply
        challenge = _pick_challenge(reply.headers)
        if challenge is None:
            raise self._error(
                f"registry {self.url} answered 401 to {method} {url.path}"
                " without a usable WWW-Authenticate challenge"
            )
        if challenge.scheme == "basic":
            if self._basic_header is None:
                raise self._needs_credentials()
            if sent.kind == "basic":
                raise self._auth_failed()
            self._basic_wanted = True
            retry = _Auth("basic", self._basic_header)
        else:
            if sent.kind == "bearer":
                self._drop_token(scope, sent)  # revoked or expired early
            token = await self._token(scope, challenge)
            retry = _Auth("bearer", f"Bearer {token}")
        reply = await self._raw(method, url, _with_auth(headers, retry))
        if reply.status == 401:
            self._drop_token(scope, retry)
            again = _pick_challenge(reply.headers)
            if again is not None and again.params.get("error") == "insufficient_scope":
                raise RegistryError(
                    f"registry {self.url}: authentication failed: user {self.username!r}"
                    f" may not {method} {url.path} ({scope})",
                    user_message="The image registry refused our credentials.",
                )
            raise self._auth_failed()
        return reply

    def _auth_for(self, scope: str) -> _Auth:
        token = self._tokens.get(scope)
        if token is not None:
            if token.refresh_at > self._clock():
                return _Auth("bearer", f"Bearer {token.value}")
            del self._tokens[scope]
        if self._basic_wanted and self._basic_header is not None:
            return _Auth("basic", self._basic_header)
        return _NO_AUTH

    def _drop_token(self, scope: str, rejected: _Auth) -> None:
        # Only the token that was refused: a concurrent request may have cached a newer one.
        cached = self._tokens.get(scope)
        if cached is not None and rejected.header == f"Bearer {cached.value}":
            del self._tokens[scope]

    async def _token(self, scope: str, challenge: _Challenge) -> str:
        cached = self._tokens.get(scope)
        if cached is not None and cached.refresh_at > self._clock():
            return cached.value  # a concurrent request fetched it meanwhile
        return await self._token_flights.run(scope, partial(self._fetch_token, scope, challenge))

    async def _fetch_token(self, scope: str, challenge: _Challenge) -> str:
        if self._token_source is not None:
            own, own_lifetime = self._token_source(challenge.params.get("scope", "").split())
            margin = min(TOKEN_REFRESH_MARGIN, own_lifetime / 2)
            self._tokens[scope] = _Token(own, self._clock() + own_lifetime - margin)
            return own
        realm = URL(challenge.params.get("realm", ""))
        if not realm.absolute or realm.scheme not in ("http", "https"):
            raise self._error(f"registry {self.url} sent a bearer challenge without a usable realm")
        query: list[tuple[str, str]] = []
        if service := challenge.params.get("service"):
            query.append(("service", service))
        query.extend(("scope", s) for s in challenge.params.get("scope", "").split())
        if self.username is not None:
            query.append(("account", self.username))
        log.debug("fetching a token for %r from %s for %s", scope, realm.origin(), self.url)
        reply = await self._raw(
            "GET",
            realm.extend_query(query),
            _with_auth(
                None, _Auth("basic", self._basic_header) if self._basic_header else _NO_AUTH
            ),
            where=f"the token service {realm.origin()} of registry {self.url}",
        )
        if reply.status in (401, 403):
            raise self._needs_credentials() if self._basic_header is None else self._auth_failed()
        if reply.status != 200:
            raise self._error(
                f"the token service {realm.origin()} of registry {self.url} answered {reply.status}"
            )
        try:
            payload = json.loads(reply.body)
            value = payload.get("token") or payload.get("access_token")
            lifetime = float(payload.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            # The body is not quoted: it may hold a token under an unexpected key.
            raise self._error(
                f"the token service {realm.origin()} of registry {self.url} returned no token"
            )
        margin = min(TOKEN_REFRESH_MARGIN, lifetime / 2)
        self._tokens[scope] = _Token(value, self._clock() + lifetime - margin)
        return value

    # -- transport -------------------------------------------------------------------------

    async def _raw(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        *,
        where: str | None = None,
    ) -> _Reply:
        where = where or f"registry {self.url}"
        session = self._ensure_session()
        try:
            async with session.request(
                method, url, headers=headers, timeout=self._timeout, raise_for_status=False
            ) as response:
                body = b"" if method == "HEAD" else await response.read()
                link = response.links.get("next")
                next_url = link.get("url") if link is not None else None
                return _Reply(
                    status=response.status,
                    headers=response.headers,
                    body=body,
                    next_link=next_url if isinstance(next_url, URL) else None,
                )
        except TimeoutError as exc:
            raise self._error(
                f"{where} did not answer {method} {url.path} within {self._timeout.total}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise self._error(f"{where} did not answer {method} {url.path}: {exc}") from exc

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("RegistryClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    def _url(self, path: str) -> URL:
        # encoded=True: names and references are validated, and yarl would re-quote ':'.
        return self._base.with_path(path, encoded=True)

    def _repository(self, image: str) -> str:
        first, slash, rest = image.partition("/")
        if slash and _looks_like_host(first):
            if first.lower() not in self._host_aliases:
                raise ValueError(f"image {image!r} is not in registry {self.url}")
            image = rest
        if self._is_docker_hub and "/" not in image:
            image = f"library/{image}"
        if len(image) > _MAX_REPOSITORY_LENGTH or not _REPOSITORY_RE.fullmatch(image):
            raise ValueError(f"invalid repository name {image!r}")
        return image

    # -- errors ----------------------------------------------------------------------------

    def _error(self, message: str) -> RegistryError:
        return RegistryError(message, user_message="The image registry is not available right now.")

    def _auth_failed(self) -> RegistryError:
        return RegistryError(
            f"registry {self.url}: authentication failed for user {self.username!r}",
            user_message="The image registry refused our credentials.",
        )

    def _needs_credentials(self) -> RegistryError:
        return RegistryError(
            f"registry {self.url} requires authentication and no credentials are configured",
            user_message="The image registry refused our credentials.",
        )

    def _unexpected(self, reply: _Reply, method: str, path: str) -> RegistryError:
        if reply.status == 429:
            what = "is rate limiting us"
        elif reply.status == 403:
            what = "refused access"
        else:
            what = "answered"
        detail = _error_detail(reply.body)
        return self._error(
            f"registry {self.url} {what}: {method} {path} -> {reply.status}"
            + (f" ({detail})" if detail else "")
        )


# -- helpers -------------------------------------------------------------------------------


def _parse_base_url(url: str) -> URL:
    if "://" not in url:
        host = url.split("/", 1)[0]
        scheme = "http" if host.startswith(_LOOPBACK_HOSTS) else "https"
        url = f"{scheme}://{url}"
    base = URL(url)
    if base.scheme not in ("http", "https") or not base.host:
        raise ValueError(f"registry url must be http(s)://host[:port], not {base.scheme}://...")
    if base.user is not None or base.password is not None:
        raise ValueError("give registry credentials as username/password, not in the url")
    if base.path.rstrip("/") not in ("", "/v2"):
        raise ValueError("a registry url has no path: the API lives at /v2/")
    return base.origin()


def _host_aliases(base: URL) -> frozenset[str]:
    host = (base.host or "").lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    names = {f"{host}:{base.port}"}
    if base.explicit_port is None or base.is_default_port():
        names.add(host)
    if host in _DOCKER_HUB_HOSTS:
        names |= _DOCKER_HUB_HOSTS
    return frozenset(names)


def _looks_like_host(component: str) -> bool:
    # docker's rule: a first component is a host if it has '.', ':', is localhost or has caps.
    return (
        "." in component
        or ":" in component
        or component == "localhost"
        or (component != component.lower())
    )


def _check_reference(reference: str) -> None:
    if not (_TAG_RE.fullmatch(reference) or _DIGEST_RE.fullmatch(reference)):
        raise ValueError(f"invalid tag or digest {reference!r}")


def _basic_authorization(username: str, password: str) -> str:
    # Our own encoder: aiohttp.BasicAuth is deprecated, its replacement too new to rely on.
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


def _delete_scope(name: str) -> str:
    return f"repository:{name}:delete"


def _with_auth(headers: Mapping[str, str] | None, auth: _Auth) -> dict[str, str]:
    merged = dict(headers or {})
    if auth.header is not None:
        merged["Authorization"] = auth.header
    return merged


def _pick_challenge(headers: CIMultiDictProxy[str]) -> _Challenge | None:
    challenges = [_parse_challenge(v) for v in headers.getall("WWW-Authenticate", [])]
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


def _parse_challenge(value: str) -> _Challenge:
    scheme, _, rest = value.strip().partition(" ")
    params: dict[str, str] = {}
    for match in _CHALLENGE_PARAM_RE.finditer(rest):
        quoted = match.group(2)
        raw = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group(3)
        params[match.group(1).lower()] = raw
    return _Challenge(scheme.lower(), params)


def _error_detail(body: bytes) -> str:
    """The registry's own error codes and messages, e.g. ``MANIFEST_INVALID: ...``."""
    try:
        errors: Any = json.loads(body).get("errors")
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}" for e in errors]
    except (ValueError, AttributeError, TypeError):
        return ""
    return "; ".join(parts)[:300]
