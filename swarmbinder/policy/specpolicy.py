"""Which specs may launch, and with what per-repo quota.

BinderHub's four per-provider options, with its matching rule: each pattern is a regex applied
with ``re.match`` (anchored at the start, not at the end) to the spec as it appears in the URL
after the provider prefix (``binder-examples/octave/HEAD`` for ``gh``), ignoring case because
most hosts treat ``DS-100/textbook`` and ``ds-100/textbook`` as one repository.

Every pattern is also matched against the spec *with* its provider prefix (``gh/org/repo/HEAD``)
and against the canonical repository URL (:mod:`canonical`) when the caller passes a
:class:`~swarmbinder.policy.canonical.RepoIdentity` rather than a bare spec: a rule applies when it
matches any of those forms, so another spelling of a banned repository is still banned, and a
pattern written with the prefix, as the admin console suggests, matches too.

A spec may launch when it matches no ``banned_specs`` pattern and, if ``allowed_specs`` holds
rules for it, matches one of those: the plain rules hold every provider's specs, a rule given
with a ``provider`` (a BinderHub provider section's own ``allowed_specs``) only that provider's,
so an allow-list of GitHub repositories leaves ``git`` launches alone, as in BinderHub.

Its quota is ``per_repo_quota_higher`` when it matches a ``high_quota_specs`` pattern, else
``per_repo_quota``; then every matching ``spec_config`` entry is applied in order, later ones
winning. A quota of 0 means "no limit", as in BinderHub.

A :class:`SpecPolicy` is immutable; changing bans live means building a new one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, SpecBanned
from .canonical import RepoIdentity, Subject, spec_of, subjects_of


@dataclass(frozen=True)
class SpecRule:
    """A compiled pattern plus why it is there (shown to the user for bans)."""

    pattern: str
    reason: str = ""
    #: For an ``allowed_specs`` item of one provider (BinderHub's per-provider list): the
    #: prefix whose launches it is about; ``""``: every provider's.
    provider: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern, re.IGNORECASE)
        except re.error as e:
            raise ConfigError("spec pattern", f"{self.pattern!r} is not a valid regex: {e}") from e
        object.__setattr__(self, "regex", compiled)

    def matches(self, subject: Subject) -> bool:
        """Whether the pattern matches any form of ``subject`` (a bare spec is one form)."""
        return any(self.regex.match(form) is not None for form in subjects_of(subject))


@dataclass(frozen=True)
class SpecConfigRule:
    """One ``spec_config`` entry: a pattern and the settings it applies."""

    rule: SpecRule
    config: Mapping[str, Any]


@dataclass(frozen=True)
class BanDecision:
    """The verdict on one spec. ``reason`` is safe to show to whoever asked."""

    banned: bool
    reason: str = ""
    pattern: str | None = None

    def __bool__(self) -> bool:
        return self.banned


@dataclass(frozen=True)
class SpecPolicy:
    banned_specs: tuple[SpecRule, ...] = ()
    allowed_specs: tuple[SpecRule, ...] = ()
    high_quota_specs: tuple[SpecRule, ...] = ()
    spec_config: tuple[SpecConfigRule, ...] = ()

    @classmethod
    def from_config(
        cls,
        *,
        banned_specs: Iterable[str | Mapping[str, str]] = (),
        allowed_specs: Iterable[str | Mapping[str, str]] = (),
        high_quota_specs: Iterable[str] = (),
        spec_config: Iterable[Mapping[str, Any]] = (),
    ) -> SpecPolicy:
        """Build a policy from BinderHub-shaped config values, rejecting malformed ones.

        ``banned_specs`` entries are regex strings, or ``{"pattern": ..., "reason": ...}`` to
        tell users why.
        """
        return cls(
            banned_specs=tuple(_banned_rule(item) for item in banned_specs),
            allowed_specs=tuple(_allowed_rule(item) for item in allowed_specs),
            high_quota_specs=tuple(_rule(p, "high_quota_specs") for p in high_quota_specs),
            spec_config=tuple(_spec_config_rule(item) for item in spec_config),
        )

    def is_banned(self, spec: Subject) -> BanDecision:
        for rule in self.banned_specs:
            if rule.matches(spec):
                return BanDecision(True, rule.reason, rule.pattern)
        allowed = self.allowed_for(spec)
        if allowed and not any(rule.matches(spec) for rule in allowed):
            return BanDecision(True, "It is not on the list of repositories allowed here.")
        return BanDecision(False)

    def allowed_for(self, spec: Subject) -> tuple[SpecRule, ...]:
        """The ``allowed_specs`` rules ``spec`` is held to: the plain ones and its provider's.
        A bare spec (its provider unknown) is held to every rule."""
        provider = spec.provider if isinstance(spec, RepoIdentity) else None
        return tuple(
            rule
            for rule in self.allowed_specs
            if not rule.provider or provider is None or rule.provider == provider
        )

    def check(self, spec: Subject) -> None:
        """Raise :class:`SpecBanned` if ``spec`` may not launch."""
        decision = self.is_banned(spec)
        if decision:
            raise SpecBanned(spec_of(spec), decision.reason)

    def has_higher_quota(self, spec: Subject) -> bool:
        return any(rule.matches(spec) for rule in self.high_quota_specs)

    def config_for(self, spec: Subject) -> dict[str, Any]:
        """The merged ``config`` of every ``spec_config`` entry that matches, in order."""
        merged: dict[str, Any] = {}
        for item in self.spec_config:
            if item.rule.matches(spec):
                merged.update(item.config)
        return merged

    def quota_for(self, spec: Subject, per_repo_quota: int, per_repo_quota_higher: int) -> int:
        """Concurrent launches allowed for ``spec``; 0 means no limit."""
        quota = per_repo_quota_higher if self.has_higher_quota(spec) else per_repo_quota
        configured = self.config_for(spec).get("quota")
        return quota if configured is None else int(configured)


def _rule(pattern: object, option: str, reason: str = "", provider: str = "") -> SpecRule:
    if not isinstance(pattern, str):
        raise ConfigError(option, f"expected a regex string, got {type(pattern).__name__}")
    try:
        return SpecRule(pattern, reason, provider)
    except ConfigError as e:
        raise ConfigError(option, e.problem) from e


def _item_rule(item: object, option: str, key: str) -> SpecRule:
    """A list item of ``option``: a regex, or ``{pattern, key}`` (``key`` is ``reason`` or
    ``provider``, a string)."""
    if not isinstance(item, Mapping):
        return _rule(item, option)
    unknown = set(item) - {"pattern", key}
    if unknown:
        raise ConfigError(option, f"unknown keys {sorted(unknown)}")
    value = item.get(key, "")
    if not isinstance(value, str):
        raise ConfigError(option, f"{key} must be a string")
    return _rule(item.get("pattern"), option, **{key: value})


def _banned_rule(item: object) -> SpecRule:
    return _item_rule(item, "banned_specs", "reason")


def _allowed_rule(item: object) -> SpecRule:
    return _item_rule(item, "allowed_specs", "provider")


def _spec_config_rule(item: object) -> SpecConfigRule:
    if not isinstance(item, Mapping):
        raise ConfigError("spec_config", f"entries must be mappings, got {type(item).__name__}")
    unknown = set(item) - {"pattern", "config"}
    if unknown:
        raise ConfigError("spec_config", f"unknown keys {sorted(unknown)}")
    config = item.get("config")
    if not isinstance(config, Mapping):
        raise ConfigError("spec_config", f"config must be a mapping, got {type(config).__name__}")
    quota = config.get("quota")
    if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
        raise ConfigError("spec_config", f"quota must be a whole number >= 0, got {quota!r}")
    return SpecConfigRule(_rule(item.get("pattern"), "spec_config"), dict(config))


def policy_for(policies: Mapping[str, SpecPolicy], provider_prefix: str) -> SpecPolicy:
    """The policy of a provider, or an empty one (allow all, default quota)."""
    return policies.get(provider_prefix, _EMPTY)


_EMPTY = SpecPolicy()
