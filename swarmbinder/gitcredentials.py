"""Git credentials for private repositories: which host gets which login, and how git asks.

BinderHub hands each provider's ``git_credentials`` to repo2docker in an environment variable
that git answers every host with. Here a login belongs to one host (and one protocol):

* ``github.git_credentials`` and ``gitlab.git_credentials`` (BinderHub's form,
  ``username=...\\npassword=...``) are for ``github.hostname`` and ``gitlab.hostname``; unset,
  they come from the configured tokens as BinderHub makes them;
* ``git.git_credentials`` holds git credential descriptions, one per host, each naming its
  ``host=`` (and ``protocol=``, https unless said otherwise).

A build gets a login only when its repository is on that host *and* cannot be read without it
(:func:`readable_anonymously`): a public repository, the kind anyone can make, never sees one.
The login reaches the builder as a Swarm secret file; the builder's git asks a credential
helper that answers only the login's own host and protocol, so a submodule or a redirect to
another host gets nothing. Neither the service's environment nor its labels hold it, and every
password is scrubbed from what Binder says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError, SwarmbinderError

#: Where a build's git login is mounted in the builder.
BUILDER_GIT_LOGIN = "/run/secrets/swarmbinder-git-login"
#: A host as git's credential protocol names it: a DNS name or address, with a port if not
#: the default. Checked because the helper script quotes it.
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PROTOCOLS = frozenset({"https", "http"})
_NOT_SECRET = frozenset({"binderhub", "oauth2", "x-access-token", "x-oauth-basic"})
#: How long the anonymous probe of a repository may take before it counts as unreadable.
PROBE_TIMEOUT = 20.0
#: What git says when the server turned down the login it sent (never the login itself).
_GIT_AUTH_FAILED = re.compile(r"fatal: Authentication failed for '([^'\s]{1,2000})'")


def login_refused_message(host: str, server: str = "the git server") -> str:
    """What a launch is told when ``host`` turned down the login: the host, never the login."""
    return (
        f"authentication failed for {host}: {server} refused the login it was given. "
        "Please tell the operators of this Binder."
    )


class GitLoginRefused(SwarmbinderError, status=403):
    """A git server turned down the login configured for its host."""

    def __init__(self, host: str, repo_url: str) -> None:
        super().__init__(
            f"{host} refused the configured git login for {repo_url}",
            user_message=login_refused_message(host),
        )
        self.host = host


def refused_host(git_output: str) -> str | None:
    """The host of git's "Authentication failed for '<url>'" line, or None.

    The host is read from the URL git names, without any user or password in it."""
    found = _GIT_AUTH_FAILED.search(git_output)
    if found is None:
        return None
    try:
        netloc = urlsplit(found.group(1)).netloc
    except ValueError:
        return None
    host = netloc.rpartition("@")[2]
    return host if _HOST.fullmatch(host) else None


@dataclass(frozen=True)
class GitLogin:
    """A login git may give to ``protocol://host`` and nowhere else."""

    protocol: str
    host: str
    username: str
    password: str = field(repr=False)

    def credential_text(self) -> bytes:
        """What the credential helper prints: git's credential format."""
        return f"username={self.username}\npassword={self.password}\n".encode()

    def secret_name(self) -> str:
        """A content-addressed Swarm secret name: the same login gives the same name, and the
        name (which anyone listing secrets sees) tells nothing of it."""
        digest = hashlib.scrypt(
            self.credential_text() + f"{self.protocol}://{self.host}".encode(),
            salt=b"swarmbinder-git-login",
            n=2**14,
            r=8,
            p=1,
            dklen=12,
        )
        return f"swarmbinder-git-login-{digest.hex()}"


class GitCredentials:
    """The configured git logins by ``protocol://host``."""

    def __init__(self, logins: Iterable[GitLogin] = ()) -> None:
        self._by_origin = {f"{login.protocol}://{login.host.lower()}": login for login in logins}

    def __bool__(self) -> bool:
        return bool(self._by_origin)

    def for_url(self, url: str) -> GitLogin | None:
        """The login for the repository at ``url``, if its host has one."""
        parts = urlsplit(url)
        if parts.scheme not in _PROTOCOLS or not parts.hostname:
            return None
        host = parts.netloc.rpartition("@")[2].lower()
        return self._by_origin.get(f"{parts.scheme}://{host}")

    def secrets(self) -> list[str]:
        """Every password (and token used as a user name), for the scrubber."""
        found = []
        for login in self._by_origin.values():
            found += [login.password, login.username]
        # Names everybody knows (BinderHub's fixed user names and GitHub's fixed password)
        # are no secret, and scrubbing them would only garble messages.
        return [s for s in dict.fromkeys(found) if len(s) >= 6 and s not in _NOT_SECRET]

    @classmethod
    def from_options(
        cls,
        *,
        github_hostname: str = "github.com",
        github_credentials: str = "",
        github_access_token: str = "",
        github_client_id: str = "",
        gitlab_hostname: str = "gitlab.com",
        gitlab_credentials: str = "",
        gitlab_token: str = "",
        git_credentials: str = "",
    ) -> GitCredentials:
        """The logins the options give, BinderHub's defaults for the tokens included.

        Raises ConfigError naming the option whose value is not a login."""
        logins = []
        if not github_credentials and github_access_token:
            # BinderHub's rule: with a client id the token is a personal access token.
            github_credentials = (
                f"username={github_client_id}\npassword={github_access_token}"
                if github_client_id
                else f"username={github_access_token}\npassword=x-oauth-basic"
            )
        if github_credentials:
            logins.append(
                _host_login("github.git_credentials", github_credentials, github_hostname)
            )
        if not gitlab_credentials and gitlab_token:
            gitlab_credentials = f"username=binderhub\npassword={gitlab_token}"
        if gitlab_credentials:
            logins.append(
                _host_login("gitlab.git_credentials", gitlab_credentials, gitlab_hostname)
            )
        logins += parse_descriptions("git.git_credentials", git_credentials)
        return cls(logins)


def parse_descriptions(option: str, text: str) -> list[GitLogin]:
    """Git credential descriptions separated by blank lines, each with ``host=``."""
    logins = []
    for block in re.split(r"\n\s*\n", _unescape(text).strip()):
        if not block.strip():
            continue
        fields = _fields(option, block)
        if "host" not in fields:
            raise ConfigError(
                option,
                "each login must name its host= (a login for every host "
                "would be handed to whichever server a repository names)",
            )
        logins.append(_login(option, fields, fields["host"]))
    return logins


def _host_login(option: str, text: str, host: str) -> GitLogin:
    fields = _fields(option, _unescape(text))
    return _login(option, fields, fields.get("host", host))


def _unescape(text: str) -> str:
    # BinderHub writes these with a literal backslash-n (its raw f-strings) as often as with a
    # newline; both mean a new line.
    return text.replace("\\n", "\n")


def _fields(option: str, block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in block.strip().splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key not in ("protocol", "host", "username", "password"):
            raise ConfigError(
                option,
                "expected lines of protocol=, host=, username= and password= (git's "
                "credential format)",
            )
        fields[key] = value
    return fields


def _login(option: str, fields: Mapping[str, str], host: str) -> GitLogin:
    protocol = fields.get("protocol", "https")
    if protocol not in _PROTOCOLS:
        raise ConfigError(option, f"protocol must be https or http, not {protocol!r}")
    if not _HOST.fullmatch(host):
        raise ConfigError(option, f"{host!r} is not a host name (with an optional :port)")
    if not fields.get("username") or not fields.get("password"):
        raise ConfigError(option, f"the login for {host} needs a username= and a password=")
    return GitLogin(protocol, host.lower(), fields["username"], fields["password"])


# -- how git asks ---------------------------------------------------------------------------


def helper_env(login: GitLogin, source: str) -> dict[str, str]:
    """Environment that makes git ask a credential helper answering ``login``'s origin only.

    ``source`` is the shell word that prints the credential (``cat FILE``). Git's own
    ``GIT_CONFIG_*`` variables carry the helper, so no config file is written; the host and
    protocol in it were checked when the config was read.
    """
    script = (
        '!f() { test "$1" = get || exit 0; h=; p=; '
        'while IFS= read -r l; do case "$l" in host=*) h="${l#host=}";; '
        'protocol=*) p="${l#protocol=}";; esac; done; '
        f'if [ "$h" = "{login.host}" ] && [ "$p" = "{login.protocol}" ]; then {source}; fi; }}; f'
    )
    return {
        "GIT_CONFIG_COUNT": "3",
        # An empty helper first: no helper from a system config answers besides ours.
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": "credential.helper",
        "GIT_CONFIG_VALUE_1": script,
        # A redirect would send git to a host the operator never named.
        "GIT_CONFIG_KEY_2": "http.followRedirects",
        "GIT_CONFIG_VALUE_2": "false",
        "GIT_TERMINAL_PROMPT": "0",
    }


def builder_env(login: GitLogin) -> dict[str, str]:
    """The builder's environment for a login mounted at :data:`BUILDER_GIT_LOGIN`."""
    return helper_env(login, f"cat {BUILDER_GIT_LOGIN}")


async def readable_anonymously(
    url: str, *, git: str = "git", within: float = PROBE_TIMEOUT
) -> bool:
    """Whether ``git ls-remote`` reads the repository with no login at all.

    A repository that answers without one gets none: its build never holds a login. Any
    failure (refused, not found, timed out) counts as not readable, and the build then gets
    the login its host has, as a clone would need it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env |= {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": "",
        "GIT_CONFIG_KEY_1": "http.followRedirects",
        "GIT_CONFIG_VALUE_1": "false",
    }
    try:
        proc = await asyncio.create_subprocess_exec(
            git,
            "ls-remote",
            "--exit-code",
            "--",
            url,
            "HEAD",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
    except OSError:
        return False
    try:
        async with asyncio.timeout(within):
            return await proc.wait() == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False
