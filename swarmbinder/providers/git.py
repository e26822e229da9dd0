"""Plain git (``git``) provider: any repository URL, resolved with ``git ls-remote``."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Collection, Mapping
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError, ProviderUnavailable, RefNotFound, SpecError
from ..gitcredentials import GitCredentials, GitLogin, GitLoginRefused, helper_env
from ..outbound import OutboundPolicy, parse_address, resolve_checked
from .base import RepoProvider, check_ref, check_text, is_full_sha
from .cache import SharedLookups
from .form import launch_form

ALLOWED_PROTOCOLS = frozenset({"http", "https", "git", "ssh"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22}
LS_REMOTE_TIMEOUT = 30.0
#: ``git.max_concurrent_ls_remote``'s default: git processes one replica runs at once.
MAX_CONCURRENT_LS_REMOTE = 8
_SCP_FORM = re.compile(r"([\w.-]+@[\w.-]+):(.+)")
# what curl's error says when http.followRedirects=false stopped git at a redirect
_REDIRECTED = re.compile(r"returned error: 30[12378]\b")
# what git prints when the repository is missing or private (so: not for us)
_NOT_FOUND_HINTS = (
    "not found",
    "does not exist",
    "not exported",
    "does not appear to be a git repository",
    "access denied",
    "could not read username",
    "could not read password",
    "authentication failed",
    "terminal prompts disabled",
    "permission denied",
)


def check_protocols(protocols: Collection[str]) -> frozenset[str]:
    """Operators may narrow the protocols git is allowed to use, never widen them."""
    unsupported = set(protocols) - ALLOWED_PROTOCOLS
    if unsupported or not protocols:
        raise ConfigError(
            "allowed_protocols",
            f"{sorted(unsupported)} not supported; choose some of {sorted(ALLOWED_PROTOCOLS)}",
        )
    return frozenset(protocols)


class GitRepoProvider(RepoProvider):
    """``git/{url-escaped repo URL}/{ref}``, e.g. ``git/https%3A%2F%2Fexample.org%2Frepo.git/main``.

    A full commit sha is taken as is, without asking the server. Anything else is looked up
    with ``git ls-remote`` and chosen the way ``git rev-parse`` would: an exact name, then
    ``refs/``, ``refs/tags/``, ``refs/heads/``, and an annotated tag resolves to its commit.

    The host must pass ``outbound``: an IP literal is checked even for a full sha; a name is
    resolved and every address checked before ``git ls-remote`` runs. Over http(s) git may not
    follow redirects and curl is pinned to the checked addresses (``http.curloptResolve``), so
    a second DNS answer cannot send it elsewhere; over git:// and ssh:// git and ssh resolve
    the name again themselves, a window docs/security.md names.

    ``ls_remote_slots``, shared by every provider of one registry, caps the ``git ls-remote``
    processes running at once: a burst of launches of distinct URLs waits for turns instead of
    forking git without bound. Waiting and running share the one ``ls_remote_timeout``.
    """

    prefix: ClassVar[str] = "git"
    name: ClassVar[str] = "Git"
    labels, display_config = launch_form(
        "git",
        "Git repository",
        label="Arbitrary git repository URL",
        text="Arbitrary git repository URL (http://git.example.com/repo)",
        placeholder="example: https://git.example.com/repo.git",
        validate_regex=r"[^/]+/.+",
        url_encode=True,
    )

    def __init__(
        self,
        spec: str,
        *,
        allowed_protocols: Collection[str] = ALLOWED_PROTOCOLS,
        ls_remote_timeout: float = LS_REMOTE_TIMEOUT,
        git: str = "git",
        lookups: SharedLookups[dict[str, str]] | None = None,
        outbound: OutboundPolicy | None = None,
        ls_remote_slots: asyncio.Semaphore | None = None,
        logins: GitCredentials | None = None,
    ) -> None:
        super().__init__(spec, outbound=outbound)
        self._lookups = lookups
        self._slots = ls_remote_slots
        self._logins = logins
        self.allowed_protocols = check_protocols(allowed_protocols)
        self.ls_remote_timeout = ls_remote_timeout
        self._git = git
        self.escaped_url, sep, quoted_ref = spec.partition("/")
        if not sep or not self.escaped_url or not quoted_ref:
            raise SpecError(
                'Spec is not of the form "url-escaped-repo-url/ref" (e.g. '
                f'"https%3A%2F%2Fexample.org%2Frepo.git/HEAD"), provided: "{spec}".'
            )
        self.repo = self._parse_url(unquote(self.escaped_url))
        self.unresolved_ref = unquote(quoted_ref)
        check_ref(self.unresolved_ref)

    def _parse_url(self, url: str) -> str:
        check_text(url, "Repository URL")
        scp = _SCP_FORM.fullmatch(url) if "://" not in url else None
        if scp:
            # git@host:path, git's scp-like syntax, as an ssh URL
            url = f"ssh://{scp.group(1)}/{scp.group(2)}"
        try:
            parts = urlsplit(url)
            host = parts.hostname
        except ValueError as e:
            raise SpecError(f"Repository URL {url!r} does not parse: {e}.") from e
        if parts.scheme not in self.allowed_protocols:
            allowed = ", ".join(sorted(self.allowed_protocols))
            raise SpecError(
                f"Unsupported git URL {url!r}: the protocol must be one of {allowed}. "
                "Did you url-escape the repository URL?"
            )
        if not host:
            raise SpecError(f"Repository URL {url!r} has no host.")
        try:
            self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError as e:
            raise SpecError(f"Repository URL {url!r} has an invalid port: {e}.") from e
        self.host = host
        return url

    def get_repo_url(self) -> str:
        return self.repo

    def get_build_slug(self) -> str:
        return self.repo

    def _resolved_spec(self, resolved_ref: str) -> str:
        return f"{self.escaped_url}/{resolved_ref}"

    def _ref_url(self, resolved_ref: str) -> str:
        # an unknown host has no known URL scheme for one commit
        return self.repo

    async def _resolve(self) -> str:
        # A full sha needs no request from us, but the build's clone would connect to it.
        self.outbound.check_literal(self.host)
        if is_full_sha(self.unresolved_ref):
            return self.unresolved_ref.lower()
        if self._lookups is None:
            refs = await self._ls_remote()
        else:
            # One git ls-remote for a burst of requests for one link.
            key = f"{self.repo}\n{self.unresolved_ref}"
            refs = await self._lookups.get(key, self._ls_remote)
        return self._pick(refs)

    def _pick(self, refs: Mapping[str, str]) -> str:
        ref = self.unresolved_ref
        names = [ref] if ref == "HEAD" or ref.startswith("refs/") else []
        names += [
            f"refs/{ref}",
            f"refs/tags/{ref}",
            f"refs/heads/{ref}",
            f"refs/remotes/{ref}",
            f"refs/remotes/{ref}/HEAD",
        ]
        for name in names:
            if name in refs:
                sha = refs.get(name + "^{}", refs[name])
                if not is_full_sha(sha):
                    raise ProviderUnavailable(f"git ls-remote gave {sha!r} for {name}")
                return sha.lower()
        hint = ""
        if re.fullmatch(r"[0-9a-fA-F]{4,39}", ref):
            hint = "A commit must be given as its full 40-character sha."
        raise self._not_found(hint)

    async def _ls_remote(self) -> dict[str, str]:
        ref = self.unresolved_ref
        pins = await self._pinned_destination()
        command = [self._git, *pins, "ls-remote", "--", self.repo, ref, ref + "^{}"]
        env = dict(os.environ)
        # never wait for a password, and never let a redirect switch to another transport
        env["GIT_TERMINAL_PROMPT"] = "0"
        env["GIT_ALLOW_PROTOCOL"] = ":".join(sorted(self.allowed_protocols))
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        login = self._login()
        if login is not None:
            # A private repository's login, given to its own host only; it lives in this
            # process's child for the length of one ls-remote.
            env |= helper_env(login, 'printf "%s" "$SWARMBINDER_GIT_LOGIN"')
            env["SWARMBINDER_GIT_LOGIN"] = login.credential_text().decode()
        deadline = asyncio.get_running_loop().time() + self.ls_remote_timeout
        if self._slots is None:
            return await self._run_ls_remote(command, env, deadline)
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError as e:
            raise ProviderUnavailable(
                f"no git ls-remote slot for {self.repo} within {self.ls_remote_timeout:g} s",
                user_message=(
                    "This Binder is busy looking up other git repositories. Try again in a minute."
                ),
            ) from e
        try:
            return await self._run_ls_remote(command, env, deadline)
        finally:
            self._slots.release()

    async def _run_ls_remote(
        self, command: list[str], env: dict[str, str], deadline: float
    ) -> dict[str, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as e:
            raise ProviderUnavailable(f"Could not run git: {e}") from e
        try:
            async with asyncio.timeout_at(deadline):
                stdout, stderr = await proc.communicate()
        except TimeoutError as e:
            await _kill(proc)
            raise ProviderUnavailable(
                f"git ls-remote {self.repo} did not finish in {self.ls_remote_timeout:g} s",
                user_message=f"The git server of {self.repo} did not answer. Try again later.",
            ) from e
        except BaseException:
            # cancelled: the child must not outlive the request
            await _kill(proc)
            raise
        if proc.returncode != 0:
            raise self._ls_remote_failed(stderr.decode("utf-8", "replace"))
        refs: dict[str, str] = {}
        for line in stdout.decode("utf-8", "replace").splitlines():
            sha, _, name = line.partition("\t")
            if name:
                refs.setdefault(name, sha)
        return refs

    def _login(self) -> GitLogin | None:
        return self._logins.for_url(self.repo) if self._logins is not None else None

    async def _pinned_destination(self) -> list[str]:
        """git options that keep ``ls-remote`` on the addresses the policy just checked."""
        try:
            async with asyncio.timeout(self.ls_remote_timeout):
                addresses = await resolve_checked(self.outbound, self.host, self.port)
        except (OSError, TimeoutError) as e:
            raise ProviderUnavailable(
                f"resolving {self.host} for git ls-remote {self.repo} failed: {e}",
                user_message=f"Could not resolve the host {self.host} of {self.repo}.",
            ) from e
        # A redirect would lead curl to a host nobody checked.
        options = ["-c", "http.followRedirects=false"]
        if parse_address(self.host) is None:
            pinned = ",".join(f"[{a}]" if ":" in a else a for a in addresses)
            options += ["-c", f"http.curloptResolve={self.host}:{self.port}:{pinned}"]
        return options

    def _ls_remote_failed(self, stderr: str) -> Exception:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        detail = lines[-1][:300] if lines else "no error message"
        login = self._login()
        if login is not None and "authentication failed" in stderr.lower():
            # The operator's login for this host was sent and turned down: not the user's
            # mistake, and not "does not exist". Only the host is named, never the login.
            return GitLoginRefused(login.host, self.repo)
        if _REDIRECTED.search(stderr):
            return SpecError(
                f"The git server of {self.repo} redirects elsewhere, and this Binder does not "
                "follow redirects of git URLs: give the repository's final URL."
            )
        if any(hint in stderr.lower() for hint in _NOT_FOUND_HINTS):
            return RefNotFound(
                f"Could not resolve ref for {self.key}: the repository {self.repo} does not "
                f"exist or is not public ({detail})."
            )
        return ProviderUnavailable(
            f"git ls-remote {self.repo} failed: {detail}",
            user_message=f"Could not reach the git server of {self.repo}: {detail}",
        )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    await proc.wait()
