"""The repo provider interface and the checks every spec passes before any network call."""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypedDict
from urllib.parse import unquote

import aiohttp

from ..errors import ProviderUnavailable, RefNotFound, SpecError
from ..outbound import OutboundPolicy, guarded_session

#: Far above any real spec (GitHub caps owners at 39 and repos at 100 characters, and a
#: url-escaped git URL rarely passes 150), far below what proxies allow in a URL.
MAX_SPEC_LENGTH = 512
DEFAULT_TIMEOUT = 10.0
USER_AGENT = "swarmbinder"

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# what `git check-ref-format` refuses anywhere in a ref name
_BAD_REF_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
#: Escapes of escapes of escapes are as far as any real spec goes (a git URL in a ``git`` spec
#: is escaped once; a path inside it perhaps once more).
_DECODE_ROUNDS = 4
_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")


def minutes_text(seconds: float) -> str:
    """``"N minutes"``, rounded up, at least one: for "Try again in ..." messages."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def unexpected(service: str, url: str, detail: str) -> ProviderUnavailable:
    """``service`` answered, but not with what its API promises."""
    return ProviderUnavailable(
        f"{service} answered {url} {detail}",
        user_message=f"{service} gave an unexpected answer. Try again later.",
    )


def answered_status(
    service: str, status: int, url: str, detail: str | None = None
) -> ProviderUnavailable:
    """``service``'s API answered with a status that has no meaning of its own here."""
    message = f"{service} API answered {status} for {url}"
    return ProviderUnavailable(
        message if detail is None else f"{message}: {detail}",
        user_message=f"{service} answered {status}. Try again later.",
    )


def retry_after(headers: Mapping[str, str], default: float = 60.0) -> float:
    """Seconds to wait from a ``Retry-After`` header (its seconds form), else ``default``."""
    value = headers.get("Retry-After", "")
    return float(value) if value.isdigit() else default


def rate_limit_exceeded(service: str, wait: float) -> ProviderUnavailable:
    return ProviderUnavailable(f"{service} rate limit exceeded. Try again in {minutes_text(wait)}.")


def is_full_sha(ref: str) -> bool:
    """A full SHA-1 or SHA-256 commit id, which needs no resolving."""
    return _SHA.fullmatch(ref) is not None


def check_text(text: str, what: str = "Spec") -> None:
    """Refuse text that is empty, overlong, has control characters or looks like an option."""
    if not text:
        raise SpecError(f"{what} is empty.")
    if len(text) > MAX_SPEC_LENGTH:
        raise SpecError(f"{what} is too long ({len(text)} characters, at most {MAX_SPEC_LENGTH}).")
    if _CONTROL_CHARS.search(text):
        raise SpecError(f"{what} contains control characters.")
    if text.startswith("-"):
        raise SpecError(f"{what} must not start with '-': {text!r}.")


def check_decoded_spec(spec: str) -> None:
    """Refuse what percent-escapes can hide from the raw checks: CR/LF, NUL, ``.`` and ``..``.

    A ``..`` segment (or ``%2e%2e``) is one the server or git normalises away, so the same
    repository would reach the build under a spelling no ban or allow-list was written for; no
    real spec needs one (git refs may not have them, repository names may not be them). The
    spec is decoded as often as it takes (at most :data:`_DECODE_ROUNDS` times): the ``git``
    provider decodes its URL once more, and its server may decode what is left.
    """
    decoded = spec
    for _ in range(_DECODE_ROUNDS):
        decoded, before = unquote(decoded), decoded
        if _CONTROL_CHARS.search(decoded):
            raise SpecError("Spec contains control characters.")
        if any(part in {".", ".."} for part in decoded.split("/")):
            raise SpecError(f"Spec must not contain '.' or '..' path segments: {spec!r}.")
        if decoded == before:
            return


def check_ref(ref: str) -> None:
    """Refuse refs git itself would refuse (``git check-ref-format`` rules) or could misread.

    ``HEAD``, branch and tag names (with ``/``), ``refs/...`` names and commit ids pass.
    """
    check_text(ref, "Ref")
    problem = None
    if _BAD_REF_CHARS.search(ref):
        problem = "contains a space or one of ~ ^ : ? * [ \\"
    elif ".." in ref or "@{" in ref or "//" in ref or ref == "@":
        problem = "is '@' or contains '..', '@{' or '//'"
    elif ref.startswith("/") or ref.endswith(("/", ".", ".lock")):
        problem = "starts with '/' or ends with '/', '.' or '.lock'"
    elif any(part.startswith(".") for part in ref.split("/")):
        problem = "has a part starting with '.'"
    if problem:
        raise SpecError(f"Ref {ref!r} is not a valid git ref: it {problem}.")


class HttpOptions(TypedDict, total=False):
    """How a provider reaches its service: what each HTTP provider hands on to
    :class:`RepoProvider`, whose defaults apply to what is left out."""

    session: aiohttp.ClientSession | None
    timeout: float
    outbound: OutboundPolicy | None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self, service: str) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise ProviderUnavailable(
                f"{service} answered {self.status} with a body that is not JSON",
                user_message=f"{service} gave an unexpected answer. Try again later.",
            ) from e


class RepoProvider(ABC):
    """One launch spec of one provider: parsed on construction, resolved on demand.

    Constructing a provider validates the spec and raises :class:`SpecError` without touching
    the network. ``get_resolved_ref`` resolves once and remembers the answer; it raises
    :class:`RefNotFound` for a missing repository or ref and :class:`ProviderUnavailable` when
    the provider cannot be asked. A provider given no ``session`` opens its own and closes it
    in :meth:`aclose` (or ``async with``); an injected session is left to its owner.

    Every connection goes only where ``outbound`` allows (default: globally routable
    addresses); an injected session must be guarded by the same policy
    (:func:`~swarmbinder.outbound.guarded_session`), which ``default_registry`` checks.
    """

    #: the URL prefix: ``/v2/{prefix}/{spec}``
    prefix: ClassVar[str]
    #: human-readable name, also the ``provider`` label of launch events
    name: ClassVar[str]
    #: the form labels of BinderHub's ``/_config`` endpoint
    labels: ClassVar[Mapping[str, object]]
    #: the entry of BinderHub's ``/api/repoproviders`` list that the home page form reads
    display_config: ClassVar[Mapping[str, object]]

    unresolved_ref: str

    def __init__(
        self,
        spec: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        outbound: OutboundPolicy | None = None,
    ) -> None:
        check_text(spec)
        self.spec = spec
        self.outbound = outbound if outbound is not None else OutboundPolicy()
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._resolved_ref: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"

    @property
    def key(self) -> str:
        return f"{self.prefix}:{self.spec}"

    @property
    def repo_url(self) -> str:
        return self.get_repo_url()

    @property
    def git_credentials(self) -> str:
        """``git credential`` input repo2docker needs to clone, or "" for a public clone."""
        return ""

    @abstractmethod
    def get_repo_url(self) -> str:
        """The URL repo2docker clones (or fetches, for non-git providers)."""

    @abstractmethod
    def get_build_slug(self) -> str:
        """A string unique to the repository (not the ref), the stem of the image name."""

    @abstractmethod
    async def _resolve(self) -> str: ...

    @abstractmethod
    def _resolved_spec(self, resolved_ref: str) -> str: ...

    @abstractmethod
    def _ref_url(self, resolved_ref: str) -> str: ...

    async def get_resolved_ref(self) -> str:
        """The immutable ref (a commit id, mostly) the spec points at right now."""
        if self._resolved_ref is None:
            self._resolved_ref = await self._resolve()
        return self._resolved_ref

    async def get_resolved_spec(self) -> str:
        """The spec pinned to the resolved ref, for ``binder_persistent_request``."""
        return self._resolved_spec(await self.get_resolved_ref())

    async def get_resolved_ref_url(self) -> str:
        """A browsable URL of the repository at the resolved ref (``binder_ref_url``)."""
        return self._ref_url(await self.get_resolved_ref())

    def _not_found(self, detail: str = "") -> RefNotFound:
        message = (
            f"Could not resolve ref for {self.key}. "
            "Double check your URL and that your repo is public."
        )
        return RefNotFound(f"{message} {detail}".strip())

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = guarded_session(self.outbound, headers={"User-Agent": USER_AGENT})
        return self._session

    async def _get(self, url: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
        """GET ``url`` (already percent-encoded); transport failures become ProviderUnavailable."""
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        all_headers.update(headers or {})
        try:
            async with self._http().get(
                url, headers=all_headers, timeout=self._timeout, allow_redirects=True
            ) as response:
                body = await response.read()
                return HttpResponse(response.status, response.headers, body)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise ProviderUnavailable(
                f"{self.name} API request failed: {type(e).__name__}: {e}",
                user_message=f"Could not reach {self.name}. Try again later.",
            ) from e

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
