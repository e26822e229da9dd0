"""Dataverse (``dataverse``) provider: a dataset of any Dataverse installation, by its DOI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import escapism

from ..errors import RefNotFound
from .datarepo import DOI_FORM_REGEX, DoiRepoProvider, check_tag
from .form import launch_form


@dataclass(frozen=True)
class DatasetInfo:
    """What resolution keeps of ``/api/datasets/:persistentId``."""

    id: int
    identifier: str
    authority: str
    persistent_url: str
    version: str


class DataverseProvider(DoiRepoProvider):
    """``dataverse/{doi}``, e.g. ``dataverse/10.7910/DVN/TJCLKP``.

    The installation is found the way BinderHub finds it: the DOI leads to a landing page of
    some Dataverse installation, whose native API is then asked for the dataset. No list of
    installations is needed here; repo2docker, which downloads the files, keeps its own. The
    resolved ref is ``{dataset id}.v{major}.{minor}`` of the latest published version.
    """

    prefix: ClassVar[str] = "dataverse"
    name: ClassVar[str] = "Dataverse"
    labels, display_config = launch_form(
        "dataverse",
        "Dataverse DOI",
        label="Dataverse DOI",
        text="Dataverse DOI (10.7910/DVN/TJCLKP)",
        placeholder="example: 10.7910/DVN/TJCLKP",
        validate_regex=DOI_FORM_REGEX,
        has_ref=False,
    )
    #: The dataset found while resolving (set per instance by _resolve).
    _info: DatasetInfo | None = None

    async def _resolve(self) -> str:
        landing = await self._resolve_doi(self.doi_resolver_url, self.spec)
        if landing.scheme not in ("http", "https") or not landing.host:
            raise RefNotFound(f"DOI {self.spec} does not lead to a Dataverse dataset ({landing}).")
        persistent_id = landing.query.get("persistentId") or f"doi:{self.spec}"
        api = landing.with_path("/api/datasets/:persistentId").with_query(
            {"persistentId": persistent_id}
        )
        self._info = await self._api(str(api), _dataset_info, missing=self._no_dataset)
        return check_tag(f"{self._info.id}.v{self._info.version}", self.name)

    def _no_dataset(self) -> RefNotFound:
        return RefNotFound(
            f"DOI {self.spec} does not lead to a published Dataverse dataset. "
            "Double check the DOI (a file's DOI will not do; use its dataset's)."
        )

    def _dataset(self) -> DatasetInfo:
        if self._info is None:
            raise RuntimeError(f"{self!r}: resolve the ref first")
        return self._info

    def get_repo_url(self) -> str:
        return self.spec

    def _build_slug(self) -> str:
        escaped: str = escapism.escape(self._dataset().identifier, escape_char="-")
        return f"dataverse-{escaped.lower()}"

    def _resolved_spec(self, resolved_ref: str) -> str:
        info = self._dataset()
        return f"{info.authority}/{info.identifier}"

    def _ref_url(self, resolved_ref: str) -> str:
        return self._dataset().persistent_url


def _dataset_info(body: Any) -> DatasetInfo:
    if body["status"] != "OK":
        raise ValueError(f"status {body['status']!r}")
    data = body["data"]
    latest = data["latestVersion"]
    if "versionNumber" not in latest:
        raise RefNotFound(f"Dataverse dataset {data['identifier']} has no published version yet.")
    return DatasetInfo(
        id=int(data["id"]),
        identifier=str(data["identifier"]),
        authority=str(data["authority"]),
        persistent_url=str(data["persistentUrl"]),
        version=f"{int(latest['versionNumber'])}.{int(latest.get('versionMinorNumber', 0))}",
    )
