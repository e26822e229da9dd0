"""The one error tree of swarmbinder.

::

    SwarmbinderError                 root; ``user_message`` is safe to show to a browser
    ├── ConfigError                  an option is unknown, mistyped or invalid (names it)
    ├── SpecError                    a launch spec does not parse or is refused
    │   ├── UnknownProvider
    │   ├── SpecBanned               banned_specs / allowed_specs said no
    │   └── RefNotFound              the repository or ref does not exist
    ├── ProviderUnavailable          a repo provider API failed or is rate limited
    ├── RegistryError                the image registry failed or refused us
    ├── SwarmUnavailable             the Docker engine / swarm manager did not answer
    ├── SwarmRequestFailed           the engine answered with an error
    │   └── ServiceNameConflict      a service of that name exists (for builds: join it)
    ├── BuildFailed                  a build ran and failed (carries the reason)
    ├── LaunchFailed                 JupyterHub could not start the server
    ├── QuotaExceeded                a pod or per-repo quota is full
    └── BuildOnlyRefused             build_only outside API-only mode, without the admin token

Adapters translate their transport errors into these at their boundary; the HTTP layer maps
them to status codes in one place. Nothing in the domain raises aiohttp.web exceptions.
"""

from __future__ import annotations


class SwarmbinderError(Exception):
    """Root of every error swarmbinder raises on purpose."""

    #: HTTP status the web layer uses when this error reaches a client.
    status_code: int = 500

    def __init__(self, message: str, *, user_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.user_message = user_message if user_message is not None else message

    def __str__(self) -> str:
        return self.message


class ConfigError(SwarmbinderError):
    """A config option is unknown, has the wrong type, or an invalid value."""

    status_code = 500

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"config option {option!r}: {problem}")
        self.option = option
        self.problem = problem


class SpecError(SwarmbinderError):
    """A provider spec does not parse, or is refused before anything is built."""

    status_code = 400


class UnknownProvider(SpecError):
    status_code = 404

    def __init__(self, provider: str) -> None:
        super().__init__(f"No provider found for prefix {provider!r}")
        self.provider = provider


class SpecBanned(SpecError):
    status_code = 403

    def __init__(self, spec: str, reason: str = "") -> None:
        # BinderHub's words, so clients that match on them keep working.
        message = f"Sorry, {spec} is not allowed to launch. Please contact admins for more info!"
        if reason:
            message += f" ({reason})"
        super().__init__(message)
        self.spec = spec
        self.reason = reason


class RefNotFound(SpecError):
    status_code = 404


class ProviderUnavailable(SwarmbinderError):
    status_code = 503


class RegistryError(SwarmbinderError):
    status_code = 503


class SwarmUnavailable(SwarmbinderError):
    status_code = 503


class BuildFailed(SwarmbinderError):
    status_code = 500


class LaunchFailed(SwarmbinderError):
    status_code = 500


class QuotaExceeded(SwarmbinderError):
    status_code = 429

    def __init__(self, message: str, *, quota: int, used: int, scope: str) -> None:
        super().__init__(message)
        self.quota = quota
        self.used = used
        self.scope = scope


class SwarmRequestFailed(SwarmbinderError):
    """The engine answered, and said no (a 4xx/5xx from the Engine API)."""

    status_code = 502

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


class BuildOnlyRefused(SwarmbinderError):
    """``build_only`` outside API-only mode from a request without the admin token."""

    status_code = 400

    def __init__(self) -> None:
        # BinderHub's words, so clients that match on them keep working.
        super().__init__(
            "build_only outside API-only mode",
            user_message=(
                "Building but not launching is not permitted when the API only mode was not "
                "enabled by setting `enable_api_only_mode` to True."
            ),
        )
