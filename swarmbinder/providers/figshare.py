"""Figshare (``figshare``) provider: an article, or one version of it, by its DOI."""

from __future__ import annotations

from typing import Any, ClassVar, Unpack

from ..errors import RefNotFound, SpecError
from .datarepo import DOI_FORM_REGEX, DOI_RESOLVER_URL, DataOptions, DoiRepoProvider
from .form import launch_form

FIGSHARE_API_BASE_URL = "https://api.figshare.com/v2"


class FigshareProvider(DoiRepoProvider):
    """``figshare/{doi}``: ``10.6084/m9.figshare.9782777.v1`` or, for the latest version,
    ``10.6084/m9.figshare.9782777``.

    The resolved ref is ``{article id}.v{version}``; an unversioned DOI is pinned to the
    version the Figshare API calls latest, and the resolved spec names it.
    """

    prefix: ClassVar[str] = "figshare"
    name: ClassVar[str] = "Figshare"
    labels, display_config = launch_form(
        "figshare",
        "FigShare DOI",
        label="FigShare DOI",
        text="Figshare DOI (10.6084/m9.figshare.9782777.v1)",
        placeholder="example: 10.6084/m9.figshare.9782777.v1",
        validate_regex=DOI_FORM_REGEX,
        has_ref=False,
    )

    def __init__(
        self,
        spec: str,
        *,
        doi_resolver_url: str = DOI_RESOLVER_URL,
        api_base_url: str = FIGSHARE_API_BASE_URL,
        **options: Unpack[DataOptions],
    ) -> None:
        super().__init__(spec, doi_resolver_url=doi_resolver_url, **options)
        self.api_base_url = api_base_url.rstrip("/")
        self.authority, _, identifier = spec.partition("/")
        fields = identifier.split(".")
        # versioned: m9.figshare.9782777.v1, unversioned: m9.figshare.9782777
        self.version = ""
        if len(fields) >= 3 and fields[-1].startswith("v"):
            self.version = fields.pop()[1:]
            if not self.version.isdigit():
                raise SpecError(f'Figshare DOI version must be "v" and a number: "{spec}".')
        if len(fields) < 2 or not fields[-1].isdigit():
            raise SpecError(
                "Figshare DOI must end with the article id and, optionally, its version "
                f'(10.6084/m9.figshare.9782777.v1), provided: "{spec}".'
            )
        self.article_id = fields.pop()
        self._doi_stem = f"{self.authority}/{'.'.join(fields)}"

    async def _resolve(self) -> str:
        # the DOI is asked first, as BinderHub does: a DOI nobody minted is "not found" even
        # when an article of that id exists
        await self._resolve_doi(self.doi_resolver_url, self.spec)
        version = self.version or await self._latest_version()
        return f"{self.article_id}.v{version}"

    async def _latest_version(self) -> str:
        url = f"{self.api_base_url}/articles/{self.article_id}/versions"
        versions: tuple[int, ...] = await self._api(url, _versions)
        if not versions:
            raise RefNotFound(f"Figshare article {self.article_id} has no versions.")
        return str(max(versions))

    def get_repo_url(self) -> str:
        return self.spec

    def _build_slug(self) -> str:
        return f"figshare-{self._resolved_ref}"

    def _resolved_spec(self, resolved_ref: str) -> str:
        return f"{self._doi_stem}.{resolved_ref}"

    def _ref_url(self, resolved_ref: str) -> str:
        return f"https://doi.org/{self._resolved_spec(resolved_ref)}"


def _versions(data: Any) -> tuple[int, ...]:
    """The version numbers of ``/articles/{id}/versions`` (a list of ``{"version": n, ...}``)."""
    return tuple(int(entry["version"]) for entry in data)
