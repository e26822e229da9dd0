"""GitLab (``gl``) provider, for gitlab.com or a self-hosted GitLab."""

from __future__ import annotations

import os
import re
from typing import ClassVar, Unpack
from urllib.parse import quote, unquote

from ..errors import ProviderUnavailable, SpecError
from ..gitcredentials import login_refused_message
from .base import (
    HttpOptions,
    RepoProvider,
    answered_status,
    check_ref,
    check_text,
    is_full_sha,
    rate_limit_exceeded,
    retry_after,
    unexpected,
)
from .form import launch_form

GITLAB_HOSTNAME = "gitlab.com"
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")


class GitLabRepoProvider(RepoProvider):
    """``gl/{url-escaped namespace/project}/{ref}``, e.g. ``gl/group%2Fsub%2Fproject/main``.

    GitLab nests groups, so the project path is url-escaped into one spec part.
    """

    prefix: ClassVar[str] = "gl"
    name: ClassVar[str] = "GitLab"
    labels, display_config = launch_form(
        "gl",
        "GitLab",
        label="GitLab repository name or URL",
        text="GitLab.com repository or URL",
        placeholder="example: https://gitlab.com/group/project or group/project",
        validate_regex=r"[^/]+/.+",
        url_encode=True,
        detect_regex="^(https?://gitlab.com/)?(?<repo>.*[^/])/?",
    )

    def __init__(
        self,
        spec: str,
        *,
        hostname: str = GITLAB_HOSTNAME,
        api_base_url: str | None = None,
        access_token: str | None = None,
        private_token: str | None = None,
        **http: Unpack[HttpOptions],
    ) -> None:
        super().__init__(spec, **http)
        self.hostname = hostname
        self.api_base_url = (api_base_url or f"https://{hostname}/api/v4").rstrip("/")
        if access_token is None:
            access_token = os.environ.get("GITLAB_ACCESS_TOKEN", "")
        if private_token is None:
            private_token = os.environ.get("GITLAB_PRIVATE_TOKEN", "")
        self.access_token = access_token
        self.private_token = private_token

        self.quoted_namespace, sep, quoted_ref = spec.partition("/")
        if not sep or not self.quoted_namespace or not quoted_ref:
            raise SpecError(
                'Spec is not of the form "url-escaped-namespace/ref" '
                f'(e.g. "group%2Fproject/HEAD"), provided: "{spec}".'
            )
        self.namespace = unquote(self.quoted_namespace)
        self.unresolved_ref = unquote(quoted_ref)
        check_text(self.namespace, "Project path")
        segments = self.namespace.split("/")
        if len(segments) < 2:
            raise SpecError(
                f"GitLab project {self.namespace!r} needs its namespace: url-escape "
                f'"group/project" as "group%2Fproject", provided: "{spec}".'
            )
        for segment in segments:
            if not _SEGMENT.fullmatch(segment) or segment in {".", ".."}:
                raise SpecError(
                    f"GitLab project path {self.namespace!r} may only have letters, digits, "
                    "'-', '_', '.' and '/' between non-empty parts."
                )
        check_ref(self.unresolved_ref)

    @property
    def git_credentials(self) -> str:
        token = self.private_token or self.access_token
        return f"username=oauth2\npassword={token}" if token else ""

    def get_repo_url(self) -> str:
        return f"https://{self.hostname}/{self.namespace}.git"

    def get_build_slug(self) -> str:
        # "-" separates the path parts, so a "-" inside a part is marked to keep slugs distinct
        return "-".join(part.replace("-", "_-") for part in self.namespace.split("/"))

    def _resolved_spec(self, resolved_ref: str) -> str:
        return f"{self.quoted_namespace}/{resolved_ref}"

    def _ref_url(self, resolved_ref: str) -> str:
        return f"https://{self.hostname}/{self.namespace}/tree/{resolved_ref}"

    async def _resolve(self) -> str:
        url = "{}/projects/{}/repository/commits/{}".format(
            self.api_base_url,
            quote(self.namespace, safe=""),
            quote(self.unresolved_ref, safe=""),
        )
        headers = {}
        if self.private_token:
            headers["PRIVATE-TOKEN"] = self.private_token
        elif self.access_token:
            headers["Authorization"] = f"Bearer {self.access_token}"
        response = await self._get(url, headers)
        if response.status == 404:
            raise self._not_found()
        if response.status == 429:
            raise rate_limit_exceeded("GitLab", retry_after(response.headers))
        if response.status == 401:
            raise ProviderUnavailable(
                f"GitLab rejected the configured token for {url}",
                user_message=login_refused_message(self.hostname, "GitLab"),
            )
        if response.status != 200:
            raise answered_status("GitLab", response.status, url)
        data = response.json("GitLab")
        sha = data.get("id") if isinstance(data, dict) else None
        if not isinstance(sha, str) or not is_full_sha(sha):
            raise unexpected("GitLab", url, "without a commit id")
        return sha
