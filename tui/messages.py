"""Messages the data worker posts to the console's widgets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from .client import Connection


@dataclass
class FeedEvent(Message):
    """One event of the admin stream (``snapshot``, ``build``, ``build.log``, ...)."""

    data: dict[str, Any]


@dataclass
class ConnectionChanged(Message):
    """The stream connected, dropped, or was refused; the newest state replaces older ones."""

    connection: Connection

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ConnectionChanged)
