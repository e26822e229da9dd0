"""``block_build_user_agents``: self-declared bots and crawlers may not start builds.

BinderHub's rule (``BuildHandler.prepare``): the request's ``User-Agent`` is matched, case
insensitively and from its start (``re.match``), against each configured regex; a match is
refused with 403 before anything else is looked at. Its default list keeps off ``bot``,
``gpt``, ``crawler`` and ``spider``, and so does ours.

The header is the client's to write, so only its first :data:`MATCHED_LENGTH` characters are
matched: a regex with backtracking that is fine on a real User-Agent cannot be made to run
for seconds by a header of 8 kB. A missing header is matched as the empty string, as BinderHub
does, so an operator can refuse clients that send none with ``^$``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..errors import ConfigError, SwarmbinderError

#: How much of a User-Agent is matched; real ones are a few hundred characters at most.
MATCHED_LENGTH = 512
OPTION = "block_build_user_agents"


class UserAgentBlocked(SwarmbinderError, status=403):
    """The request's User-Agent matches one of ``block_build_user_agents``."""

    def __init__(self, pattern: str) -> None:
        # BinderHub answers "Bots not allowed"; ours also says what to do about it.
        super().__init__(
            f"user agent matching {pattern!r}",
            user_message=(
                "Bots not allowed: this client's User-Agent may not start builds. "
                "Open the launch link in a web browser."
            ),
        )
        self.pattern = pattern


class UserAgentBlock:
    """The compiled ``block_build_user_agents``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        compiled = []
        for index, pattern in enumerate(patterns):
            try:
                compiled.append(re.compile(pattern, re.IGNORECASE))
            except re.error as e:
                raise ConfigError(
                    OPTION, f"item {index}: {pattern!r} is not a valid regex: {e}"
                ) from None
        self._patterns = tuple(compiled)

    def check(self, headers: Mapping[str, str]) -> None:
        """Raises :class:`UserAgentBlocked` when the request's User-Agent is refused."""
        if not self._patterns:
            return
        user_agent = headers.get("User-Agent", "")[:MATCHED_LENGTH]
        for pattern in self._patterns:
            if pattern.match(user_agent):
                raise UserAgentBlocked(pattern.pattern)
