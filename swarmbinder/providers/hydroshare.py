"""HydroShare (``hydroshare``) provider: a resource by its id, URL or DOI."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Unpack

from ..errors import SpecError
from .datarepo import DataOptions, DataRepoProvider, epoch_seconds
from .form import launch_form

HYDROSHARE_BASE_URL = "https://www.hydroshare.org"
# BinderHub's rule: the resource id is the (last) 32 hex digits anywhere in the spec, so a bare
# id, a (url-escaped) resource URL and a DOI (10.4211/hs.{id}) all work.
_RESOURCE_ID = re.compile(r".*([0-9a-f]{32})")


class HydroshareProvider(DataRepoProvider):
    """``hydroshare/{resource id, url-escaped resource URL or DOI}``.

    HydroShare keeps no history: the resolved ref is ``{id}.v{last modified, epoch seconds}``,
    and the resolved spec and ref URL are the resource's URL.
    """

    prefix: ClassVar[str] = "hydroshare"
    name: ClassVar[str] = "Hydroshare"
    labels, display_config = launch_form(
        "hydroshare",
        "Hydroshare resource",
        label="Hydroshare resource id",
        text="Hydroshare resource id or URL",
        placeholder="example: 8f7c2f0341ef4180b0dbe97f59130756",
        validate_regex=r"[^/]+",
        url_encode=True,
        has_ref=False,
    )

    def __init__(
        self, spec: str, *, base_url: str = HYDROSHARE_BASE_URL, **options: Unpack[DataOptions]
    ) -> None:
        super().__init__(spec, **options)
        match = _RESOURCE_ID.match(spec)
        if match is None:
            raise SpecError(
                "The specified Hydroshare resource id was not recognized: expected 32 hex "
                f'digits, a resource URL or a DOI, provided: "{spec}".'
            )
        self.resource_id = match.group(1)
        self.base_url = base_url.rstrip("/")

    async def _resolve(self) -> str:
        url = f"{self.base_url}/hsapi/resource/{self.resource_id}/scimeta/elements"
        modified = await self._api(url, _last_modified)
        return f"{self.resource_id}.v{epoch_seconds(modified, self.name)}"

    def get_repo_url(self) -> str:
        return f"{self.base_url}/resource/{self.resource_id}"

    def _build_slug(self) -> str:
        # BinderHub's slug carries the version, so each version is its own image repository
        return f"hydroshare-{self._resolved_ref}"

    def _resolved_spec(self, resolved_ref: str) -> str:
        return self.get_repo_url()

    def _ref_url(self, resolved_ref: str) -> str:
        return self.get_repo_url()


def _last_modified(data: Any) -> str:
    """The ``modified`` date of a resource's science metadata (``dates[].start_date``)."""
    for item in data["dates"]:
        if item["type"] == "modified":
            return str(item["start_date"])
    raise KeyError("no date of type 'modified'")
