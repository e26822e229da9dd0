"""CKAN (``ckan``) provider: a dataset of any CKAN site, by its URL."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Unpack
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from ..errors import SpecError
from .base import check_text
from .datarepo import DataOptions, DataRepoProvider, check_tag, epoch_seconds
from .form import launch_form

# CKAN dataset names are [a-z0-9_-] (2-100 characters), ids are UUIDs; both end up in the tag
_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


class CKANProvider(DataRepoProvider):
    """``ckan/{url-escaped dataset URL}``, e.g. ``ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fx``.

    A past version is chosen with ``/history/{activity id}`` or ``?activity_id=`` in the URL.
    The resolved ref is ``{dataset}.v{metadata_modified, epoch seconds}``; the resolved spec and
    ref URL are the dataset URL itself, as in BinderHub.
    """

    prefix: ClassVar[str] = "ckan"
    name: ClassVar[str] = "CKAN"
    labels, display_config = launch_form(
        "ckan",
        "CKAN dataset",
        label="CKAN dataset URL",
        text="CKAN dataset URL (https://demo.ckan.org/dataset/my-sample-dataset-001)",
        placeholder="https://demo.ckan.org/dataset/my-sample-dataset-001",
        validate_regex=r"[^/]+",
        url_encode=True,
        has_ref=False,
    )

    def __init__(self, spec: str, **options: Unpack[DataOptions]) -> None:
        super().__init__(spec, **options)
        self.repo = unquote(spec)
        check_text(self.repo, "Dataset URL")
        try:
            url = urlsplit(self.repo)
            host = url.hostname
        except ValueError as e:
            raise SpecError(f"CKAN dataset URL does not parse: {self.repo!r} ({e}).") from None
        if url.scheme not in ("http", "https") or not host:
            raise SpecError(
                f'CKAN spec must be an http(s) dataset URL (url-escaped), provided: "{spec}".'
            )
        # CKAN may live under a path prefix: https://example.org/data/dataset/{name}
        url_prefix, sep, dataset_path = url.path.partition("/dataset/")
        parts = dataset_path.split("/")
        if not sep or not _NAME.fullmatch(parts[0]):
            raise SpecError(
                "CKAN spec must be a dataset URL such as "
                f'"https://demo.ckan.org/dataset/my-sample-dataset-001", provided: "{self.repo}".'
            )
        self.dataset_id = parts[0]
        # /history/{activity id} wins over ?activity_id=, as in BinderHub
        activity_id = ""
        if "history" in parts:
            following = parts[parts.index("history") + 1 :]
            activity_id = following[0] if following else ""
        else:
            activity_id = parse_qs(url.query).get("activity_id", [""])[0]
        if activity_id and not _NAME.fullmatch(activity_id):
            raise SpecError(f"CKAN activity id {activity_id!r} is not a CKAN id.")
        api = f"{url.scheme}://{url.netloc}{url_prefix}/api/3/action/"
        if activity_id:
            query = urlencode({"id": activity_id, "object_type": "package"})
            self.api_url = f"{api}activity_data_show?{query}"
        else:
            self.api_url = f"{api}package_show?{urlencode({'id': self.dataset_id})}"

    async def _resolve(self) -> str:
        modified = await self._api(self.api_url, _metadata_modified)
        return check_tag(f"{self.dataset_id}.v{epoch_seconds(modified, self.name)}", self.name)

    def get_repo_url(self) -> str:
        return self.repo

    def _build_slug(self) -> str:
        return f"ckan-{self.dataset_id}"

    def _resolved_spec(self, resolved_ref: str) -> str:
        return self.repo

    def _ref_url(self, resolved_ref: str) -> str:
        return self.repo


def _metadata_modified(body: Any) -> str:
    return str(body["result"]["metadata_modified"])
