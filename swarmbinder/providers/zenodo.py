"""Zenodo (``zenodo``) provider: a record by its DOI."""

from __future__ import annotations

from typing import ClassVar

from ..errors import RefNotFound
from .datarepo import DOI_FORM_REGEX, DoiRepoProvider, check_tag
from .form import launch_form


class ZenodoProvider(DoiRepoProvider):
    """``zenodo/{doi}``, e.g. ``zenodo/10.5281/zenodo.3242074``.

    The DOI is resolved to the record it leads to; a concept DOI (all versions of a record)
    leads to the latest version, so the resolved spec names that version's DOI. The repo URL is
    the DOI itself: repo2docker resolves it again and downloads the record's files.
    """

    prefix: ClassVar[str] = "zenodo"
    name: ClassVar[str] = "Zenodo"
    labels, display_config = launch_form(
        "zenodo",
        "Zenodo DOI",
        label="Zenodo DOI",
        text="Zenodo DOI (10.5281/zenodo.3242074)",
        placeholder="example: 10.5281/zenodo.3242074",
        validate_regex=DOI_FORM_REGEX,
        has_ref=False,
    )

    async def _resolve(self) -> str:
        target = await self._resolve_doi(self.doi_resolver_url, self.spec)
        # the record id is the last part of where the DOI leads: .../records/3242074
        record_id = target.path.rstrip("/").rsplit("/", 1)[-1]
        if not record_id:
            raise RefNotFound(f"DOI {self.spec} does not lead to a Zenodo record ({target}).")
        return check_tag(record_id, self.name)

    def get_repo_url(self) -> str:
        return self.spec

    def _build_slug(self) -> str:
        return f"zenodo-{self._resolved_ref}"

    def _resolved_spec(self, resolved_ref: str) -> str:
        # BinderHub's rule: the version part of a Zenodo DOI is the record id. A DOI of another
        # Zenodo-run repository (CaltechDATA's 10.22002/...) has no such part and stays as is.
        head, sep, _ = self.spec.partition("zenodo")
        return f"{head}zenodo.{resolved_ref}" if sep else self.spec

    def _ref_url(self, resolved_ref: str) -> str:
        return f"https://doi.org/{self._resolved_spec(resolved_ref)}"
