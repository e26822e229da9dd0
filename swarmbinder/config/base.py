"""What options and sections are made of: a documented field, and a frozen section that
checks every field as it is built.

A section is a frozen dataclass of options made with :func:`opt`; the option table
(:data:`~swarmbinder.config.OPTIONS`) is read off the sections by :func:`build_options`, so
an option is declared once, in its section, with its help text and checks.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from ..errors import ConfigError
from . import values

ENV_PREFIX = "SWARMBINDER_"
MASK = "***"

_Check = Callable[[Any], Any]
#: (attribute of Config or of Config.providers, section class), in documentation order.
SectionList = Sequence[tuple[str, type["Section"]]]


def opt(
    default: Any,
    help: str,
    *,
    secret: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    check: _Check | None = None,
    parse: _Check | None = None,
    type_name: str | None = None,
) -> Any:
    """A documented option; ``check`` normalises or rejects a typed value (ValueError)."""
    metadata = {
        "help": help,
        "secret": secret,
        "minimum": minimum,
        "maximum": maximum,
        "check": check,
        "parse": parse,
        "type_name": type_name,
    }
    if isinstance(default, Mapping):
        frozen = types.MappingProxyType(dict(default))
        return field(default_factory=lambda: frozen, metadata=metadata)
    return field(default=default, metadata=metadata)


def url_opt(default: str, help: str) -> Any:
    """An http(s) URL."""
    return opt(default, help, check=values.http_url)


def bytes_opt(default: int, help: str, *, minimum: int | None = None) -> Any:
    """A size in bytes, given as a number or like '2G'."""
    return opt(default, help, minimum=minimum, parse=values.byte_spec, type_name="bytes")


@dataclass(frozen=True)
class Section:
    """Base of every section: type-checks and validates each field on construction."""

    #: Prepended to field names to give option names ("github." for the GitHub section).
    _prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = values.field_types(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            try:
                value = (
                    meta["parse"](value) if meta["parse"] else values.coerce(value, hints[f.name])
                )
                if isinstance(value, int) and meta["minimum"] is not None:
                    if value < meta["minimum"]:
                        raise ValueError(f"must be {meta['minimum']} or more, got {value}")
                if isinstance(value, int) and meta["maximum"] is not None:
                    if value > meta["maximum"]:
                        raise ValueError(f"must be {meta['maximum']} or less, got {value}")
                if meta["check"]:
                    value = meta["check"](value)
            except ValueError as e:
                raise ConfigError(self._prefix + f.name, str(e)) from None
            object.__setattr__(self, f.name, value)


def plain(value: Any) -> Any:
    """Tuples and read-only mappings as plain lists and dicts."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


@dataclass(frozen=True)
class OptionInfo:
    """One option as documented: what docs/config.md and error suggestions are made from."""

    name: str
    """The option's name: its YAML key, dotted for nested sections (``github.hostname``)."""
    section: str
    """Attribute of Config (``builds``) or of Config.providers (``github``) holding it."""
    attr: str
    """The field name within the section."""
    type_name: str
    default: Any
    help: str
    secret: bool
    hint: Any
    nested: bool

    @property
    def env(self) -> str:
        """The environment variable that sets this option."""
        return ENV_PREFIX + self.name.replace(".", "_").upper()


def sections_of(holder: type[Any]) -> tuple[tuple[str, type[Section]], ...]:
    """(attribute, class) of each section field of the dataclass ``holder``, in field order: the
    holder's fields are the one list of its sections, and of their order in docs/config.md."""
    found: list[tuple[str, type[Section]]] = []
    for f in fields(holder):
        factory = f.default_factory
        if isinstance(factory, type) and issubclass(factory, Section):
            found.append((f.name, factory))
    return tuple(found)


def build_options(flat: SectionList, nested: SectionList) -> Mapping[str, OptionInfo]:
    """Every option of ``flat`` sections (top-level YAML keys) and ``nested`` ones (a YAML
    section each, dotted names), in that order."""
    options: dict[str, OptionInfo] = {}
    for is_nested, sections in ((False, flat), (True, nested)):
        for section_name, cls in sections:
            hints = values.field_types(cls)
            for f in fields(cls):
                if f.default is not MISSING:
                    default = f.default
                elif f.default_factory is not MISSING:
                    default = f.default_factory()
                else:  # pragma: no cover - every option has a default
                    raise TypeError(f"option {f.name} has no default")
                name = f"{section_name}.{f.name}" if is_nested else f.name
                if name in options:  # pragma: no cover - caught the moment it is written
                    raise TypeError(f"option {name} is defined twice")
                options[name] = OptionInfo(
                    name=name,
                    section=section_name,
                    attr=f.name,
                    type_name=f.metadata["type_name"] or values.type_name(hints[f.name]),
                    default=default,
                    help=f.metadata["help"],
                    secret=f.metadata["secret"],
                    hint=hints[f.name],
                    nested=is_nested,
                )
    return types.MappingProxyType(options)
