"""Loading: the YAML file, the environment and command-line overrides, merged into a Config.

The precedence and the forms each source takes are in :mod:`swarmbinder.config`'s docstring.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml

from ..errors import ConfigError
from . import values
from .base import ENV_PREFIX, OptionInfo, Section
from .binderhub import Translation, split_file
from .providers import NESTED_SECTIONS, ProvidersConfig
from .sections import FLAT_SECTIONS, OPTIONS, Config

#: The environment variable naming the config file when no path is given.
CONFIG_ENV = "SWARMBINDER_CONFIG"

_BY_ENV: Mapping[str, OptionInfo] = {option.env: option for option in OPTIONS.values()}
_NESTED = dict(NESTED_SECTIONS)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Load, merge and validate every source (the precedence is in :mod:`swarmbinder.config`).

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment. ``overrides``
    maps option names (``port``, ``github.hostname``) to values, as parsed command-line flags.
    Raises ConfigError for the first problem found.
    """
    env = os.environ if env is None else env
    if path is None:
        path = env.get(CONFIG_ENV) or None
    raw: dict[str, Any] = {}
    binderhub = Translation()
    if path is not None:
        file_options, binderhub = _file_layer(Path(path))
        raw.update(file_options)
    later = _env_layer(env)
    if overrides:
        later.update(_mapping_layer(overrides, dotted=True))
    raw.update(later)
    try:
        return _build(raw, tuple(binderhub.ignored))
    except ConfigError as e:
        # A value BinderHub's config gave is named by both its BinderHub key and our option.
        where = binderhub.sources.get(e.option) if e.option not in later else None
        if where is None:
            raise
        raise ConfigError(e.option, f"{e.problem} (set by BinderHub's {where})") from None


def _build(raw: Mapping[str, Any], ignored: tuple[str, ...] = ()) -> Config:
    def section(name: str, cls: type[Section]) -> Any:
        kwargs = {
            o.attr: raw[o.name] for o in OPTIONS.values() if o.section == name and o.name in raw
        }
        return cls(**kwargs)

    flat = {name: section(name, cls) for name, cls in FLAT_SECTIONS}
    nested = {name: section(name, cls) for name, cls in NESTED_SECTIONS}
    return Config(**flat, providers=ProvidersConfig(**nested), ignored_binderhub_options=ignored)


def _suggest(name: str, candidates: Iterator[str] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _secret_names() -> list[str]:
    return [option.name for option in OPTIONS.values() if option.secret]


def _read_secret(option: str, path: Any) -> str:
    if not isinstance(path, str):
        raise ConfigError(option, f"expected a file path, got {values.describe(path)}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(option, f"secret file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(option, f"cannot read secret file {path!r}: {e}") from None
    return text.rstrip("\r\n")


def _file_layer(path: Path) -> tuple[dict[str, Any], Translation]:
    """The file's options (its BinderHub sections translated) and what those sections set."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config_file", f"{str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("config_file", f"cannot read {str(path)!r}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(
            "config_file", f"{str(path)!r} is not valid YAML: {_yaml_problem(e)}"
        ) from None
    if data is None:
        return {}, Translation()
    if not isinstance(data, dict):
        raise ConfigError(
            "config_file",
            f"{str(path)!r} must hold a mapping of option names to values, "
            f"not {values.describe(data)}",
        )
    ours, binderhub = split_file(data)
    options = _mapping_layer(ours, dotted=False)
    binderhub.merge_into(options)
    return options, binderhub


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def _mapping_layer(data: Mapping[Any, Any], *, dotted: bool) -> dict[str, Any]:
    """Option values from a YAML mapping or overrides, with ``<secret>_file`` read."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and key in _NESTED and not dotted:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    key, f"expected a mapping of {key} settings, got {values.describe(value)}"
                )
            for subkey, subvalue in value.items():
                _put(out, f"{key}.{subkey}", subvalue, data=value, prefix=f"{key}.")
        elif isinstance(key, str) and ("." not in key or dotted):
            _put(out, key, value, data=data, prefix="")
        else:
            raise ConfigError(str(key), f"unknown option{_suggest(str(key), list(OPTIONS))}")
    return out


def _put(
    out: dict[str, Any], name: str, value: Any, *, data: Mapping[Any, Any], prefix: str
) -> None:
    if name in OPTIONS:
        out[name] = value
        return
    base = name.removesuffix("_file")
    if base != name and base in OPTIONS and OPTIONS[base].secret:
        if base.removeprefix(prefix) in data:
            raise ConfigError(base, f"set either {base} or {name}, not both")
        out[base] = _read_secret(name, value)
        return
    scope = [o for o in OPTIONS if o.startswith(prefix)] if prefix else list(OPTIONS)
    scope += [f"{o}_file" for o in _secret_names() if o.startswith(prefix)]
    raise ConfigError(name, f"unknown option{_suggest(name, scope)}")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        if var in _BY_ENV:
            option = _BY_ENV[var]
            if f"{var}_FILE" in env and option.secret:
                raise ConfigError(option.name, f"set either {var} or {var}_FILE, not both")
            out[option.name] = _parse_env(option, var, text)
        elif var.endswith("_FILE") and var.removesuffix("_FILE") in _BY_ENV:
            option = _BY_ENV[var.removesuffix("_FILE")]
            if not option.secret:
                raise ConfigError(option.name, f"{var}: only secrets can be read from a file")
            out[option.name] = _read_secret(f"{option.name}_file", text)
        else:
            # The prefix is shared with other tools (test helpers, image build scripts), so
            # only a near miss of a real option is treated as a typo.
            suffix = var.removeprefix(ENV_PREFIX)
            names = [v.removeprefix(ENV_PREFIX) for v in _BY_ENV]
            close = difflib.get_close_matches(suffix, names, n=1, cutoff=0.8)
            if close:
                raise ConfigError(
                    suffix.lower(),
                    f"unknown option from environment variable {var} "
                    f"(did you mean {ENV_PREFIX + close[0]!r}?)",
                )
    return out


def _parse_env(option: OptionInfo, var: str, text: str) -> Any:
    hint = option.hint
    if get_origin(hint) in (Union, types.UnionType):
        if text.strip() in ("", "null", "none", "None"):
            return None
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    if hint is str:
        return text
    if hint is bool:
        word = text.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ConfigError(option.name, f"{var}={text!r} is not a boolean (true or false)")
    if hint is int and option.type_name != "bytes":
        try:
            return int(text.strip())
        except ValueError:
            raise ConfigError(option.name, f"{var}={text!r} is not an integer") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(
            option.name, f"{var} is not valid YAML or JSON: {_yaml_problem(e)}"
        ) from None
