"""The registry login each build pushes with: made, revoked and removed with its build.

The builder reads the repository's files, and a repository can make repo2docker quote a file it
links to, so with a token issuer (``registry_token_key``) the login a build gets is its own: it
can push and pull only this build's image repository, expires with ``build_max_age`` and is
revoked when the build ends. Its secret is made for the build and removed with its service.
Without an issuer (a registry with static logins) the configured login is mounted instead, in
one secret every build shares, and a repository that reads it can push anywhere.

How the secrets are spelled (names, content, labels, mount) is :mod:`swarmbinder.buildjob`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Container
from dataclasses import dataclass

from .buildjob import (
    REGISTRY_AUTH_LABELS,
    BuildRequest,
    BuildSettings,
    GitLoginMount,
    build_login_labels,
    build_login_secret,
    docker_config_json,
    login_mount,
    registry_auth_secret_name,
    registry_hosts,
)
from .errors import BuildFailed, SwarmbinderError, SwarmRequestFailed
from .gitcredentials import BUILDER_GIT_LOGIN, GitLogin, readable_anonymously
from .jobspec import SecretMount
from .labels import KIND_BUILD, KIND_BUILD_AUTH, KIND_GIT_LOGIN, LABEL_BUILD, LABEL_KIND
from .registrytokens import BuildCredential, image_repository
from .swarm import SwarmClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobLogins:
    """The logins one build service is made, or promoted from the queue, with."""

    #: The secret the builder pushes with, and the build's own login in it (token issuer).
    secret: SecretMount | None = None
    credential: BuildCredential | None = None
    #: The login the build of a private repository clones with.
    git_login: GitLoginMount | None = None


#: A build login younger than this is never swept: its service may be in the making by
#: another replica.
SWEEP_SPARES_YOUNGER_THAN = 60


class BuildLogins:
    """The registry login secrets of one build manager's builds."""

    def __init__(
        self,
        swarm: SwarmClient,
        settings: BuildSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._swarm = swarm
        self._settings = settings
        self._clock = clock
        #: The configured login's secret name by content: the name is slow to compute.
        self._secret_names: dict[bytes, str] = {}
        self._git_secret_names: dict[GitLogin, str] = {}
        self._settings.scrubber.update(settings.git_logins.secrets())

    async def for_job(self, request: BuildRequest, *, own_login: bool) -> JobLogins:
        """Every login the build's service mounts: :meth:`git_login` and :meth:`for_build`."""
        git_login = await self.git_login(request)
        secret, credential = await self.for_build(request, own_login=own_login)
        return JobLogins(secret, credential, git_login)

    async def for_build(
        self, request: BuildRequest, *, own_login: bool
    ) -> tuple[SecretMount | None, BuildCredential | None]:
        """The secret the builder pushes with: with a token issuer a login of the build's own
        (none yet unless ``own_login``), else the configured credentials; none to push
        without credentials."""
        settings = self._settings
        if not settings.push:
            return None, None
        if settings.issuer is not None:
            return await self._own_login(request) if own_login else (None, None)
        return await self._configured_login(request), None

    async def _own_login(self, request: BuildRequest) -> tuple[SecretMount, BuildCredential]:
        """A new login that may push and pull only this build's image repository, until
        build_max_age from now, in a Swarm secret of its own."""
        assert self._settings.issuer is not None
        credential = self._settings.issuer.mint_build_credential(
            image_repository(request.image), valid_for=self._settings.max_age
        )
        self._settings.scrubber.add(credential.password)
        secret = build_login_secret(request, self._settings, credential)
        try:
            info = await self._swarm.ensure_secret(secret.name, secret.content, secret.labels)
        except SwarmbinderError as exc:
            self._settings.issuer.revoke(credential.username)
            self._settings.scrubber.discard(credential.password)
            raise BuildFailed(
                f"could not give the build its registry login: {exc}",
                user_message="Could not start the build: its registry login could not be "
                "stored in the swarm. Try again later.",
            ) from exc
        return login_mount(info), credential

    async def _configured_login(self, request: BuildRequest) -> SecretMount | None:
        """The Swarm secret holding the builder's registry credentials, made on first use."""
        settings = self._settings
        if not settings.has_registry_credentials:
            return None
        assert settings.registry_username is not None and settings.registry_password is not None
        hosts = registry_hosts(request, settings)
        content = docker_config_json(hosts, settings.registry_username, settings.registry_password)
        name = self._secret_names.get(content)
        if name is None:
            name = await asyncio.to_thread(registry_auth_secret_name, content)
            self._secret_names[content] = name
        info = await self._swarm.ensure_secret(name, content, REGISTRY_AUTH_LABELS)
        return login_mount(info)

    async def git_login(self, request: BuildRequest) -> GitLoginMount | None:
        """The git login the build of a private repository clones with; none for a repository
        anyone can read, or on a host without a login."""
        login = self._settings.git_logins.for_url(request.repo_url)
        if login is None or await readable_anonymously(request.repo_url):
            return None
        name = self._git_secret_names.get(login)
        if name is None:
            name = await asyncio.to_thread(login.secret_name)
            self._git_secret_names[login] = name
        try:
            info = await self._swarm.ensure_secret(
                name, login.credential_text(), {LABEL_KIND: KIND_GIT_LOGIN}
            )
        except SwarmbinderError as exc:
            raise BuildFailed(
                f"could not give the build its git login: {exc}",
                user_message="Could not start the build: the login for its private repository "
                "could not be stored in the swarm. Try again later.",
            ) from exc
        return GitLoginMount(login, SecretMount(info.id, info.name, BUILDER_GIT_LOGIN, 0o400))

    async def discard(self, logins: JobLogins) -> None:
        """Undo :meth:`for_job` for a build service that was never made."""
        secret, credential = logins.secret, logins.credential
        if credential is None or secret is None:
            return
        if self._settings.issuer is not None:
            self._settings.issuer.revoke(credential.username)
        self._settings.scrubber.discard(credential.password)
        with contextlib.suppress(SwarmbinderError):
            await self._swarm.remove_secret(secret.secret_id)

    def revoke(self, username: str, credential: BuildCredential | None) -> None:
        """End a build's own login: ``username`` from its label is all revoking needs."""
        if username and self._settings.issuer is not None:
            self._settings.issuer.revoke(username)
        if credential is not None:
            # Revoked, it opens nothing; the scrubber's set stays the size of what is live.
            self._settings.scrubber.discard(credential.password)

    async def remove_of(self, service_name: str) -> None:
        """Remove the build logins of a removed build service; one a task still holds is left
        for :meth:`sweep`."""
        if self._settings.issuer is None:
            return
        for secret in await self._swarm.list_secrets(build_login_labels(service_name)):
            try:
                await self._swarm.remove_secret(secret.id)
            except SwarmRequestFailed as exc:
                log.info("build login %s not removed yet: %s", secret.name, exc)

    async def sweep(self, known: Container[str]) -> list[str]:
        """Remove build logins whose build service is gone (removed while a task held the
        secret, or by another process) and that no build in ``known`` owns."""
        if self._settings.issuer is None:
            return []
        logins = await self._swarm.list_secrets({LABEL_KIND: KIND_BUILD_AUTH})
        if not logins:
            return []
        services = {s.name for s in await self._swarm.list_services({LABEL_KIND: KIND_BUILD})}
        removed = []
        for secret in logins:
            owner = secret.labels.get(LABEL_BUILD, "")
            if (
                owner in services
                or owner in known
                or secret.age(self._clock()) < SWEEP_SPARES_YOUNGER_THAN
            ):
                continue
            with contextlib.suppress(SwarmbinderError):
                if await self._swarm.remove_secret(secret.id):
                    removed.append(secret.name)
        return removed
