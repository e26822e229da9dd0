"""The one error tree of swarmbinder.

Every error swarmbinder raises on purpose derives from :class:`SwarmbinderError`, whose
``user_message`` is safe to show to a browser and whose ``status_code`` is the HTTP status the
web layer answers with (in parentheses below). The errors of one rule or adapter live with it,
in the module named before the dot; the rest live here::

    SwarmbinderError (500)                     root
    ├── ConfigError (500)                      an option is unknown, mistyped or invalid
    ├── SpecError (400)                        a launch spec does not parse or is refused
    │   ├── UnknownProvider (404)
    │   ├── SpecBanned (403)                   banned_specs / allowed_specs said no
    │   ├── RefNotFound (404)                  the repository or ref does not exist
    │   └── outbound.DestinationRefused (403)  a spec points a provider at a refused address
    ├── ProviderUnavailable (503)              a repo provider API failed or is rate limited
    ├── RegistryError (503)                    the image registry failed or refused us
    ├── SwarmUnavailable (503)                 the Docker engine / swarm manager did not answer
    ├── SwarmRequestFailed (502)               the engine answered with an error
    │   └── ServiceNameConflict (502)          a service of that name exists (builds: join it)
    ├── BuildFailed (500)                      a build ran and failed (carries the reason)
    │   └── builds._StopBuild (500)            a build is ended by us (overdue, never placed)
    ├── builds.BuildQueueFull (503)            build_queue_limit builds wait already
    ├── LaunchFailed (500)                     JupyterHub could not start the server
    │   ├── hubclient.HubRequestFailed (500)   the hub said no (503 when the trouble is its own)
    │   ├── hubclient.HubUnavailable (503)     the hub did not answer, even after retries
    │   ├── launcher.ServerConflict (409)      the logged-in user may not start another server
    │   └── launcher.NoRoomForServerName (400) the user name leaves no room for a server name
    ├── QuotaExceeded (429)                    a pod or per-repo quota is full
    ├── BuildOnlyRefused (400)                 build_only outside API-only mode, no admin token
    ├── policy.bans.NetworkBanned (403)        the request comes from a banned network
    ├── policy.bans.InvalidBan (400)           an admin's ban cannot work
    ├── policy.useragents.UserAgentBlocked (403)  block_build_user_agents matched
    ├── gitcredentials.GitLoginRefused (403)   a git server turned down the configured login
    ├── policy.clientip.InvalidNetwork (400)   not a network in CIDR notation
    ├── policy.buildtokens.BuildTokenError (403)
    │   ├── BuildTokenInvalid (403)            malformed, another secret's, another repo's
    │   ├── BuildTokenExpired (403)
    │   └── BuildTokenOriginMismatch (403)     issued for another site
    ├── policy.ratelimit.RateLimitExceeded (429)
    ├── policy.streamcap.TooManyStreams (429)  max_streams_per_ip event streams open already
    ├── policy.quotas.InvalidQuota (400)       an admin's quota override cannot work
    ├── hubauth.HubAuthError (403)             logging a user in through the hub failed
    │   ├── OAuthCallbackInvalid (400)
    │   ├── OAuthStateMismatch (403)
    │   ├── LoginRefused (403)
    │   ├── NotLoggedIn (403)
    │   └── HubAuthUnavailable (503)
    ├── admin.AdminError (500)                 an admin console action failed
    │   ├── NotFound (404)
    │   ├── Conflict (409)
    │   └── AdminUnavailable (503)
    ├── handlers.admin._BadRequest (400)       an admin API request body or parameter is bad
    ├── pages.BadLaunchParameter (400)         urlpath/labpath/filepath would leave the server
    ├── store.StoreError (500)                 the store's database failed a query
    │   ├── StoreClosed (500)
    │   └── StoreUnavailable (503)             the database server did not answer (PostgreSQL)
    ├── stackctl.StackError (500)              swarmbinder up/down could not do its work
    │   └── StackInputError (500)              it was asked for something impossible
    ├── hostsetup.SetupError (500)             a host setup step failed
    ├── registrygc.RegistryGCFailed (500)      the registry's garbage collection failed
    ├── sshkeys.AuthorizedKeysError (500)      also a ValueError: the console's keys file is bad
    ├── sshconsole.ConsoleSetupError (500)     the SSH console's key file or address is unusable
    └── UsageError (500)                       a command's own input check (exit code 2)

The admin console (``tui/``) stands apart: it reads the service over HTTP only, and its own
errors are a small tree of their own (``client.AdminClientError`` with ``Unauthorized``,
``Unreachable`` and ``RequestFailed``).

Adapters translate their transport errors into these at their boundary; the HTTP layer maps
them to status codes in one place. Nothing in the domain raises aiohttp.web exceptions.
"""

from __future__ import annotations


class SwarmbinderError(Exception):
    """Root of every error swarmbinder raises on purpose."""

    #: HTTP status the web layer uses when this error reaches a client; a subclass declares
    #: its own with a class keyword, ``class NotFound(AdminError, status=404)``, and inherits
    #: its parent's otherwise.
    status_code: int = 500

    def __init_subclass__(cls, *, status: int | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status_code = status

    def __init__(self, message: str, *, user_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.user_message = user_message if user_message is not None else message

    def __str__(self) -> str:
        return self.message


class ConfigError(SwarmbinderError, status=500):
    """A config option is unknown, has the wrong type, or an invalid value."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"config option {option!r}: {problem}")
        self.option = option
        self.problem = problem


class UsageError(SwarmbinderError):
    """Bad input found by a command itself; printed as one line, exit code 2."""


class SpecError(SwarmbinderError, status=400):
    """A provider spec does not parse, or is refused before anything is built."""


class UnknownProvider(SpecError, status=404):
    def __init__(self, provider: str) -> None:
        super().__init__(f"No provider found for prefix {provider!r}")
        self.provider = provider


class SpecBanned(SpecError, status=403):
    def __init__(self, spec: str, reason: str = "") -> None:
        # BinderHub's words, so clients that match on them keep working.
        message = f"Sorry, {spec} is not allowed to launch. Please contact admins for more info!"
        if reason:
            message += f" ({reason})"
        super().__init__(message)
        self.spec = spec
        self.reason = reason


class RefNotFound(SpecError, status=404): ...


class ProviderUnavailable(SwarmbinderError, status=503): ...


class RegistryError(SwarmbinderError, status=503): ...


class SwarmUnavailable(SwarmbinderError, status=503): ...


class BuildFailed(SwarmbinderError, status=500): ...


class LaunchFailed(SwarmbinderError, status=500): ...


class QuotaExceeded(SwarmbinderError, status=429):
    def __init__(self, message: str, *, quota: int, used: int, scope: str) -> None:
        super().__init__(message)
        self.quota = quota
        self.used = used
        self.scope = scope


class SwarmRequestFailed(SwarmbinderError, status=502):
    """The engine answered, and said no (a 4xx/5xx from the Engine API)."""

    def __init__(self, what: str, status: int, detail: str) -> None:
        super().__init__(
            f"{what}: the Docker engine answered {status}: {detail}",
            user_message="The Docker Swarm manager refused a request.",
        )
        self.status = status
        self.detail = detail


class ServiceNameConflict(SwarmRequestFailed):
    """A service with this name exists already: for builds, that means "join it"."""

    def __init__(self, name: str, service_id: str) -> None:
        super().__init__(f"create service {name}", 409, "name conflicts with an existing object")
        self.name = name
        self.service_id = service_id


class BuildOnlyRefused(SwarmbinderError, status=400):
    """``build_only`` outside API-only mode from a request without the admin token."""

    def __init__(self) -> None:
        # BinderHub's words, so clients that match on them keep working.
        super().__init__(
            "build_only outside API-only mode",
            user_message=(
                "Building but not launching is not permitted when the API only mode was not "
                "enabled by setting `enable_api_only_mode` to True."
            ),
        )
