"""Checks of option values, used by the sections of :mod:`swarmbinder.config`.

Type checks turn a value read from YAML, the environment or flags into the field's type (lists
into tuples, mappings read-only) or say what was expected. Value checks take an already
type-checked value and return it normalised, or raise ValueError with what is wrong; the config
loader adds the option's name.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import types
from collections.abc import Callable, Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..gitcredentials import parse_descriptions

# --- value checks: each takes an already type-checked value, returns it normalised -----------


def http_url(value: str | None) -> str | None:
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


def http_url_slash(value: str | None) -> str | None:
    """BinderHub's hub_url and badge_base_url validators add a trailing slash when set."""
    value = http_url(value)
    if value and not value.endswith("/"):
        value += "/"
    return value


def postgres_url(value: str | None) -> str | None:
    if value is None:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ValueError(f"{value!r} is not a postgresql://USER@HOST[:PORT]/DATABASE URL")
    if parts.password is not None:
        # The URL shows up in logs and errors; a password belongs in store_password(_file).
        raise ValueError("must not contain a password: set store_password or store_password_file")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    if not parts.path.strip("/"):
        raise ValueError(f"{value!r} names no database (postgresql://USER@HOST/DATABASE)")
    return value


def git_credentials(value: str) -> str:
    try:
        parse_descriptions("git.git_credentials", value)
    except ConfigError as e:
        raise ValueError(e.problem) from None  # the option is named once, by the caller
    return value


def base_url(value: str) -> str:
    if not value.startswith("/"):
        value = "/" + value
    if not value.endswith("/"):
        value += "/"
    return value


def docker_host(value: str | None) -> str | None:
    if value is None:
        return None
    scheme = urlsplit(value).scheme
    if scheme not in ("unix", "tcp", "http", "https", "ssh", "npipe"):
        raise ValueError(f"{value!r} is not a Docker engine URL (unix://, tcp://, ssh://, ...)")
    return value


def log_level(value: str) -> str:
    name = value.upper()
    if name not in logging.getLevelNamesMapping():
        choices = ", ".join(sorted(logging.getLevelNamesMapping()))
        raise ValueError(f"{value!r} is not a logging level name ({choices})")
    return name


def image_prefix(value: str) -> str:
    if value != value.lower() or any(ch.isspace() for ch in value):
        raise ValueError(f"{value!r} must be lower case without spaces (Docker image names)")
    return value


def cidr(text: str) -> str:
    try:
        ipaddress.ip_network(text)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a network in CIDR notation: {e}") from None
    return text


def cidr_list(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(cidr(text) for text in value)


def cidr_keys(value: Mapping[str, str]) -> Mapping[str, str]:
    for text in value:
        cidr(text)
    return value


def regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from None
    return pattern


def regex_list(value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(regex(pattern) for pattern in value)


def hex_secret(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError("must be a hex string, e.g. from `openssl rand -hex 32`") from None
    return value


def cookie_secret(value: str | None) -> str | None:
    value = hex_secret(value)
    if value is not None and len(bytes.fromhex(value)) < 16:
        raise ValueError("must be at least 16 bytes (32 hex digits)")
    return value


_BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_BYTE_SPEC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def byte_spec(value: Any) -> int:
    """BinderHub's ByteSpecification: a number of bytes, or a string like ``512M`` or ``1.5G``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number: float = value
    elif isinstance(value, str) and (match := _BYTE_SPEC.match(value)):
        number = float(match.group(1)) * _BYTE_UNITS[match.group(2).upper()]
    else:
        raise ValueError(f"expected a number of bytes or a size like '512M', got {value!r}")
    if number < 0:
        raise ValueError(f"must be 0 or more, got {value!r}")
    return int(number)


#: A ``spec_config`` item: read-only ``{"pattern": regex, "config": {name: value}}``.
SpecConfigItem = Mapping[str, Any]
#: A ``banned_specs`` item: a regex, or read-only ``{"pattern": regex, "reason": text}``.
BannedSpec = str | Mapping[str, str]
#: An ``allowed_specs`` item: a regex for every provider, or read-only
#: ``{"pattern": regex, "provider": prefix}`` for one provider's launches only.
AllowedSpec = str | Mapping[str, str]
_PROVIDER_PREFIX = re.compile(r"[a-z][a-z0-9]*")


def _items(value: Any, shape: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of {shape}, got {describe(value)}")
    return list(value)


def _pattern_mapping(index: int, item: Any, keys: set[str], required: set[str]) -> dict[str, Any]:
    """Check one ``{pattern, ...}`` list item, naming it by index in errors."""
    expected = " and ".join(sorted(required)) + "".join(f" (optional {k})" for k in keys - required)
    if not isinstance(item, Mapping) or not required <= set(item) <= keys:
        raise ValueError(f"item {index}: expected a mapping with keys {expected}")
    if not isinstance(item["pattern"], str):
        raise ValueError(f"item {index}: pattern must be a string")
    try:
        regex(item["pattern"])
    except ValueError as e:
        raise ValueError(f"item {index}: {e}") from None
    return dict(item)


def _regex_or_mapping(
    value: Any, key: str, required: bool, check: Callable[[Any], str | None]
) -> tuple[str | Mapping[str, str], ...]:
    """A list of regexes or ``{pattern, key}`` mappings (``key`` optional unless ``required``);
    ``check`` says what is wrong with a ``key`` value, or None."""
    items: list[str | Mapping[str, str]] = []
    for index, item in enumerate(_items(value, f"regexes or {{pattern, {key}}} mappings")):
        if isinstance(item, str):
            try:
                items.append(regex(item))
            except ValueError as e:
                raise ValueError(f"item {index}: {e}") from None
            continue
        if not isinstance(item, Mapping):
            raise ValueError(
                f"item {index}: expected a regex or a {{pattern, {key}}} mapping, got "
                f"{describe(item)}"
            )
        wanted = {"pattern", key} if required else {"pattern"}
        checked = _pattern_mapping(index, item, {"pattern", key}, wanted)
        problem = check(checked[key]) if key in checked else None
        if problem:
            raise ValueError(f"item {index}: {key} {problem}")
        items.append(types.MappingProxyType(checked))
    return tuple(items)


def banned_specs(value: Any) -> tuple[BannedSpec, ...]:
    return _regex_or_mapping(
        value, "reason", False, lambda v: None if isinstance(v, str) else "must be a string"
    )


def allowed_specs(value: Any) -> tuple[AllowedSpec, ...]:
    def provider_problem(provider: Any) -> str | None:
        if isinstance(provider, str) and _PROVIDER_PREFIX.fullmatch(provider):
            return None
        return f"must be a provider prefix such as gh or git, got {provider!r}"

    return _regex_or_mapping(value, "provider", True, provider_problem)


def spec_config(value: Any) -> tuple[SpecConfigItem, ...]:
    items: list[SpecConfigItem] = []
    for index, item in enumerate(_items(value, "{pattern, config} mappings")):
        checked = _pattern_mapping(index, item, {"pattern", "config"}, {"pattern", "config"})
        config = checked["config"]
        if not isinstance(config, Mapping):
            raise ValueError(f"item {index}: config must be a mapping")
        quota = config.get("quota")
        if quota is not None and (type(quota) is not int or quota < 0):
            raise ValueError(f"item {index}: quota must be an integer, 0 or more, got {quota!r}")
        checked["config"] = types.MappingProxyType(dict(config))
        items.append(types.MappingProxyType(checked))
    return tuple(items)


# --- type checks ---------------------------------------------------------------------------

_TYPE_WORDS = {bool: "a boolean", int: "an integer", str: "a string", float: "a number"}


def describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", str: "string", float: "number"}.get(type(value))
    if kind is None:
        kind = "mapping" if isinstance(value, Mapping) else type(value).__name__
        kind = "null" if value is None else kind
    return f"{value!r} ({kind})"


def coerce(value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type; lists become tuples, mappings read-only."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (arg for arg in args if arg is not type(None))
        return coerce(value, inner)
    if hint in _TYPE_WORDS:
        # bool is an int subclass: a boolean where an integer is expected is a mistake.
        if type(value) is not hint:
            raise ValueError(f"expected {_TYPE_WORDS[hint]}, got {describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {describe(value)}")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(coerce(item, args[0]))
            except ValueError as e:
                raise ValueError(f"item {index}: {e}") from None
        return tuple(items)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a mapping, got {describe(value)}")
        out = {}
        for key, item in value.items():
            try:
                out[coerce(key, args[0])] = coerce(item, args[1])
            except ValueError as e:
                raise ValueError(f"key {key!r}: {e}") from None
        return types.MappingProxyType(out)
    raise TypeError(f"unsupported option type {hint!r}")  # a bug in this module, not in config


def type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return "any"
    if origin in (Union, types.UnionType):
        (inner,) = (arg for arg in args if arg is not type(None))
        return f"{type_name(inner)} or null"
    if origin is tuple:
        return f"list of {type_name(args[0])}"
    if origin is Mapping:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}"
    return str(hint.__name__)


_HINTS: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]
