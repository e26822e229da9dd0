"""What the data-repository providers share: DOI specs, DOI resolution and cached JSON APIs.

Zenodo, Figshare, Dataverse, HydroShare and CKAN hold datasets, not git repositories: the
"ref" is a record or version id, repo2docker fetches the content itself from the repo URL
(its content providers recognise these hosts), and no git ref is ever typed by the user.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, Unpack
from urllib.parse import quote

import aiohttp
from yarl import URL

from ..errors import ProviderUnavailable, RefNotFound, SpecError
from .base import (
    USER_AGENT,
    HttpOptions,
    RepoProvider,
    answered_status,
    rate_limit_exceeded,
    retry_after,
    unexpected,
)
from .cache import EtagCache, NegativeCache

T = TypeVar("T")

DOI_RESOLVER_URL = "https://doi.org"
# BinderHub's form check for every DOI provider is "10\.\d+\/(.)+"; spaces and quotes are
# refused too, as no DOI registration agency hands them out and they only make trouble in URLs.
_DOI = re.compile(r"10\.\d{4,9}/[^\s\"'<>\\]+")
# What Docker accepts as an image tag; every resolved ref here becomes one.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
#: the home form's check of a DOI spec, BinderHub's
DOI_FORM_REGEX = r"10\.\d+\/(.)+"


@dataclass
class DataCache:
    """What the data providers of one service share: ETag-keyed answers and recent misses.

    Values are the few fields a provider took from an answer, not the whole JSON document
    (a Dataverse dataset's metadata runs to tens of kilobytes).
    """

    answers: EtagCache[Any] = field(default_factory=EtagCache)
    not_found: NegativeCache = field(default_factory=NegativeCache)


class DataOptions(HttpOptions, total=False):
    """What every data provider takes besides its spec and its own settings."""

    cache: DataCache | None


def check_doi(spec: str, service: str) -> None:
    if not _DOI.fullmatch(spec):
        raise SpecError(
            f'{service} spec must be a DOI such as "10.5281/zenodo.3242074", provided: "{spec}".'
        )


def check_tag(ref: str, service: str) -> str:
    """A resolved ref must be a valid image tag; anything else means the API answered oddly."""
    if not _TAG.fullmatch(ref):
        raise ProviderUnavailable(
            f"{service} gave a record id that is not a valid image tag: {ref!r}",
            user_message=f"{service} gave an unexpected answer. Try again later.",
        )
    return ref


def epoch_seconds(timestamp: object, service: str) -> str:
    """Whole seconds since 1970 of an ISO timestamp, read as UTC, as BinderHub versions datasets.

    BinderHub drops fractions and zone (HydroShare and CKAN answer in UTC) before converting.
    """
    match = _TIMESTAMP.match(timestamp) if isinstance(timestamp, str) else None
    if match is None:
        raise ProviderUnavailable(
            f"{service} answered with a timestamp that does not parse: {timestamp!r}",
            user_message=f"{service} gave an unexpected answer. Try again later.",
        )
    parsed = datetime.strptime(match.group(0), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    return str(int(parsed.timestamp()))


class DataRepoProvider(RepoProvider):
    """A provider whose resolution is a DOI lookup and a JSON API call or two."""

    def __init__(
        self, spec: str, *, cache: DataCache | None = None, **http: Unpack[HttpOptions]
    ) -> None:
        super().__init__(spec, **http)
        self.cache = cache if cache is not None else DataCache()
        self.unresolved_ref = ""

    def get_build_slug(self) -> str:
        if self._resolved_ref is None:
            # the slug holds the record id, which only resolution finds out
            raise RuntimeError(f"{self!r}: resolve the ref before asking for the build slug")
        return self._build_slug()

    def _build_slug(self) -> str:
        raise NotImplementedError

    async def _resolve_doi(self, resolver_url: str, doi: str) -> URL:
        """Where ``doi`` leads, after every redirect (BinderHub's ``effective_url``).

        Only the headers are read: the last hop is a landing page, and its HTML is of no use.
        """
        url = f"{resolver_url.rstrip('/')}/{quote(doi, safe='/:;()')}"
        if url in self.cache.not_found:
            raise self._doi_not_found(doi)
        # A browser's Accept: doi.org answers some JSON types with metadata, not a redirect.
        headers = {"User-Agent": USER_AGENT, "Accept": "text/html"}
        try:
            async with self._http().get(
                URL(url, encoded=True), headers=headers, timeout=self._timeout
            ) as response:
                status, final = response.status, response.url
        except aiohttp.TooManyRedirects as e:
            raise RefNotFound(f"DOI {doi} redirects too many times.") from e
        except (TimeoutError, aiohttp.ClientError) as e:
            raise ProviderUnavailable(
                f"resolving DOI {doi} at {resolver_url} failed: {type(e).__name__}: {e}",
                user_message=f"Could not resolve the DOI {doi}. Try again later.",
            ) from e
        if status in (404, 410):
            self.cache.not_found.add(url)
            if final == URL(url, encoded=True):
                raise self._doi_not_found(doi)
            raise RefNotFound(
                f"DOI {doi} leads to {final}, which answered {status}: "
                "the record may have been removed or made private."
            )
        if status == 429:
            raise rate_limit_exceeded(self.name, retry_after({}))
        if status >= 400:
            raise ProviderUnavailable(
                f"resolving DOI {doi} ended at {final} with {status}",
                user_message=f"{final.host or 'The DOI target'} answered {status}. "
                "Try again later.",
            )
        return final

    def _doi_not_found(self, doi: str) -> RefNotFound:
        return RefNotFound(f"DOI {doi} was not found. Double check the DOI for {self.name}.")

    async def _api(
        self,
        url: str,
        extract: Callable[[Any], T],
        *,
        missing: Callable[[], RefNotFound] | None = None,
    ) -> T:
        """GET a JSON API URL and ``extract`` what is needed, reusing it while the ETag holds.

        404 and 410 raise ``missing()`` (default: the provider's "could not resolve" message)
        and are remembered for a minute; 401 and 403 mean the record is not public.
        """
        miss = missing if missing is not None else self._not_found
        cached = self.cache.answers.get(url)
        if cached is None and url in self.cache.not_found:
            raise miss()
        headers = {"If-None-Match": cached.etag} if cached is not None else {}
        response = await self._get(url, headers)
        if response.status == 304 and cached is not None:
            value: T = cached.value
            return value
        if response.status in (404, 410):
            self.cache.answers.discard(url)
            self.cache.not_found.add(url)
            raise miss()
        if response.status in (401, 403):
            raise RefNotFound(
                f"{self.name} refused access to {self.key}: it is not public, "
                "and this Binder only builds public records."
            )
        if response.status == 429:
            raise rate_limit_exceeded(self.name, retry_after(response.headers))
        if response.status != 200:
            raise answered_status(self.name, response.status, url)
        try:
            value = extract(response.json(self.name))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise unexpected(self.name, url, f"without the expected fields ({e!r})") from e
        etag = response.headers.get("ETag")
        if etag:
            self.cache.answers.set(url, etag, value)
        return value


class DoiRepoProvider(DataRepoProvider):
    """A data repository whose spec is a DOI, resolved at ``doi_resolver_url``."""

    def __init__(
        self, spec: str, *, doi_resolver_url: str = DOI_RESOLVER_URL, **options: Unpack[DataOptions]
    ) -> None:
        super().__init__(spec, **options)
        check_doi(spec, self.name)
        self.doi_resolver_url = doi_resolver_url
