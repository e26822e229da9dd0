"""The service's log lines: level, format and date format as configured, BinderHub's fields too.

BinderHub's ``log_format`` is a traitlets format that may use ``%(highlevel)s`` (`` WARNING |``
for warnings and worse, empty below), and JupyterHub's formats, often copied along, use tornado's
``%(color)s`` and ``%(end_color)s``; :class:`BinderHubFormatter` fills all three, so a format
copied from a BinderHub or JupyterHub config works unchanged (without colours: logs go to files
and ``docker service logs``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # the config's checks use this module: no import of it at run time
    from .config import Config, ServerConfig

#: swarmbinder's own line: time, level, logger, message.
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: BinderHub's (traitlets') default date format.
DEFAULT_DATEFMT = "%Y-%m-%d %H:%M:%S"


class BinderHubFormatter(logging.Formatter):
    """A logging.Formatter that also fills ``highlevel``, ``color`` and ``end_color``."""

    def format(self, record: logging.LogRecord) -> str:
        record.highlevel = f" {record.levelname} |" if record.levelno >= logging.WARNING else ""
        record.color = record.end_color = ""
        return super().format(record)


def check_format(fmt: str) -> str:
    """A config check: ``fmt`` must format a record (a %-style format, known fields only)."""
    try:
        record = logging.makeLogRecord({"msg": "checking", "levelno": 20, "levelname": "INFO"})
        BinderHubFormatter(fmt).format(record)
    except (ValueError, KeyError, TypeError) as e:
        detail = f"no log record field {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{fmt!r} is not a %-style logging format: {detail}") from None
    return fmt


def effective_level(*, debug: bool, log_level: str) -> str:
    """BinderHub's ``debug`` logs at DEBUG whatever ``log_level`` says."""
    return "DEBUG" if debug else log_level


def configure_logging(
    level: str,
    fmt: str = DEFAULT_FORMAT,
    datefmt: str = DEFAULT_DATEFMT,
    stream: TextIO | None = None,
    *,
    debug: bool = False,
) -> logging.Handler:
    """Send every log record at ``level`` (DEBUG with ``debug``) or above to ``stream``
    (stderr) in ``fmt``.

    Returns the handler it adds to the root logger (a test removes it again).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(BinderHubFormatter(fmt, datefmt))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(effective_level(debug=debug, log_level=level))
    return handler


def start_logging(server: ServerConfig) -> logging.Handler:
    """``swarmbinder serve``'s logging, as the server section says."""
    return configure_logging(
        server.log_level, server.log_format, server.log_datefmt, debug=server.debug
    )


def log_startup_notes(config: Config) -> None:
    """Once, at start-up: the BinderHub options that were ignored, and (at DEBUG) every option
    in effect, secrets masked."""
    from .config import ignored_warning

    log = logging.getLogger("swarmbinder")
    if config.ignored_binderhub_options:
        log.warning(ignored_warning(config.ignored_binderhub_options))
    log.debug("options in effect: %s", json.dumps(config.as_dict(mask_secrets=True)))
