"""BinderHub's own config, read as it is: the ``config:`` block of its Helm chart.

An operator moving over keeps the YAML they have::

    config:                     # optional: the sections may also stand at the top level
      BinderHub:
        hub_url: https://hub.example.org
        use_registry: true
        build_namespace: binder # Kubernetes only: accepted, named in one start-up warning
      GitHubRepoProvider:
        access_token: ...
        banned_specs: [^evil/.*]

Each section is one of BinderHub's configurable classes (:data:`SECTIONS`), each key one of its
traits, which lands on swarmbinder's option of the same meaning (:class:`Trait`; most keep
BinderHub's name). Traits that mean nothing here (Kubernetes objects, BinderHub's Python classes)
are accepted and listed in one warning line; an unknown section or trait is an error with the
closest name suggested, as for our own options. docs/config.md has the whole table.

A provider's ``banned_specs``, ``allowed_specs``, ``high_quota_specs`` and ``spec_config`` apply,
in BinderHub, to that provider's specs only; here they join the one list of each, with every
pattern tied to the provider's prefix (:func:`scoped_pattern`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .binderhub_traits import (
    CHART_OPTIONS,
    DEFAULT_REPO_PROVIDERS,
    HELM_CHART_VALUES,
    PROVIDER_CLASSES,
    SECTIONS,
    Trait,
    repo_providers,
    scoped_pattern,
)

__all__ = [
    "CHART_OPTIONS",
    "DEFAULT_REPO_PROVIDERS",
    "HELM_CHART_VALUES",
    "PROVIDER_CLASSES",
    "SECTIONS",
    "Trait",
    "Translation",
    "ignored_warning",
    "render_table",
    "repo_providers",
    "scoped_pattern",
    "split_file",
]

# --- reading a file ------------------------------------------------------------------------------


@dataclass
class Translation:
    """What a file's BinderHub sections set: our options, where each came from, what was ignored."""

    options: dict[str, Any] = field(default_factory=dict)
    #: our option -> the BinderHub key(s) that set it (``config.BinderHub.hub_url``)
    sources: dict[str, str] = field(default_factory=dict)
    merged: set[str] = field(default_factory=set)
    #: BinderHub keys accepted but meaning nothing here, for the one start-up warning
    ignored: list[str] = field(default_factory=list)

    def add_section(self, name: str, traits: Any, where: str) -> None:
        info = SECTIONS[name]
        if traits is None:
            return  # the chart's own values.yaml has `KubernetesBuildExecutor: {}`
        if not isinstance(traits, Mapping):
            raise ConfigError(where, f"expected a mapping of {name} options, got {_kind(traits)}")
        for trait, value in traits.items():
            key = f"{where}.{trait}"
            spec = info.traits.get(str(trait))
            if spec is None:
                close = difflib.get_close_matches(str(trait), list(info.traits), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(key, f"unknown {name} option{hint}")
            option = spec.option
            if not option:
                self.ignored.append(key)
                continue
            converted = spec.convert(value, key) if spec.convert else value
            self._put(option, converted, key, merge=spec.merge)

    def add_chart_value(self, key: str, value: Any) -> None:
        """A value of the chart outside ``config:``: ours if :data:`CHART_OPTIONS` says so,
        else ignored (a Kubernetes object); an unset (null) value is no value at all."""
        if key in CHART_OPTIONS:
            self._put(CHART_OPTIONS[key], value, key, merge=False)
        elif isinstance(value, Mapping) and any(o.startswith(f"{key}.") for o in CHART_OPTIONS):
            for child, item in value.items():
                self.add_chart_value(f"{key}.{child}", item)
            if key == "registry" and value.get("password") and not value.get("username"):
                # the chart's default login: Google's for gcr.io, a token elsewhere
                login = "_json_key" if value.get("url") == "https://gcr.io" else "<token>"
                self._put("registry_username", login, "registry.url", merge=False)
        elif value is not None:
            self.ignored.append(key)

    def _put(self, option: str, value: Any, key: str, *, merge: bool) -> None:
        if option not in self.options:
            self.options[option] = value
            self.sources[option] = key
            if merge:
                self.merged.add(option)
            return
        if merge and option in self.merged and isinstance(value, list | tuple):
            previous = self.options[option]
            if isinstance(previous, list | tuple):
                self.options[option] = [*previous, *value]
                self.sources[option] += f" and {key}"
                return
        raise ConfigError(option, f"set twice: by {self.sources[option]} and by {key}")

    def merge_into(self, ours: dict[str, Any]) -> None:
        """Add the translated options to ``ours`` (the file's own options, by name)."""
        for option, value in self.options.items():
            if option not in ours:
                ours[option] = value
                continue
            previous = ours[option]
            if (
                option in self.merged
                and isinstance(previous, list | tuple)
                and isinstance(value, list | tuple)
            ):
                ours[option] = [*previous, *value]
                continue
            raise ConfigError(option, f"set twice: as {option} and by {self.sources[option]}")


def _kind(value: Any) -> str:
    from .values import describe

    return describe(value)


def split_file(data: Mapping[Any, Any]) -> tuple[dict[Any, Any], Translation]:
    """A config file's own options, and what its BinderHub sections set.

    Sections are read under a top-level ``config:`` (a Helm chart's values) or at the top
    level; with ``config:`` present, the chart's other top-level values are ignored (warned).
    """
    ours: dict[Any, Any] = {}
    translation = Translation()
    chart = "config" in data
    for key, value in data.items():
        if key == "config":
            if not isinstance(value, Mapping):
                raise ConfigError(
                    "config", f"expected BinderHub's sections (BinderHub: ...), got {_kind(value)}"
                )
            for name, traits in value.items():
                if name not in SECTIONS:
                    close = difflib.get_close_matches(str(name), list(SECTIONS), n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"config.{name}", f"unknown BinderHub section{hint}")
                translation.add_section(name, traits, f"config.{name}")
        elif key in SECTIONS:
            translation.add_section(key, value, key)
        elif chart and key in HELM_CHART_VALUES:
            translation.add_chart_value(key, value)
        else:
            ours[key] = value
    return ours, translation


def ignored_warning(ignored: tuple[str, ...] | list[str]) -> str:
    """The one start-up line naming every BinderHub option that does nothing here."""
    return (
        "BinderHub options that mean nothing on Docker Swarm were ignored (docs/config.md "
        f"says why): {', '.join(ignored)}"
    )


# --- docs ----------------------------------------------------------------------------------------


def render_table() -> list[str]:
    """docs/config.md's table from every BinderHub option to swarmbinder's."""
    lines = [
        "## BinderHub's options",
        "",
        "A file may also hold BinderHub's own config as its Helm chart takes it: sections named "
        "after BinderHub's classes, at the top level or under `config:`, beside swarmbinder's "
        "options. Each BinderHub option sets the swarmbinder option below; one that is "
        "not applicable is accepted and named in one warning at start-up. With `config:`, the "
        "chart's other top-level values are Kubernetes objects, ignored the same way, except "
        + ", ".join(f"`{k}` (`{o}`)" for k, o in CHART_OPTIONS.items())
        + ". An option set twice (by two "
        "sections, or by a section and swarmbinder's own key) is an error, except the spec "
        "lists, which add up. A provider's allowed_specs holds that provider's launches only, "
        "as in BinderHub (its items carry the provider: `{pattern, provider}`).",
        "",
        "| BinderHub option | swarmbinder option |",
        "| --- | --- |",
    ]
    for name, info in SECTIONS.items():
        for trait, spec in sorted(info.own.items()):
            option = spec.option
            if option:
                cell = f"`{option}`" + (f" ({spec.why})" if spec.why else "")
            else:
                cell = f"not applicable: {spec.why}"
            lines.append(f"| `{name}.{trait}` | {cell} |")
        if info.parents:
            parents = ", ".join(f"`{p}`" for p in info.parents)
            lines.append(f"| `{name}.*` | as {parents} |")
    return lines
