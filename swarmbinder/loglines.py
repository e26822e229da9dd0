"""Service log text into lines: joined in linear time, each cut at a limit.

The engine sends a long log line as 16 KiB frames with no newline between them, and a
repository can make repo2docker write a line of any length.
"""

from __future__ import annotations

#: The longest log line passed on, in characters. A repository can make repo2docker quote a
#: file of any size in one line (a 5 MB apt.txt became a 5 MB event, stored log line and
#: failure reason); the rest of a longer line is dropped and counted.
MAX_LOG_LINE = 64 * 1024


class StreamProgress:
    """What a log stream has received so far, complete lines or not: someone waiting for a
    log to go quiet sees a long line still arriving (a 5 MB line is 320 frames and no line
    ends until the last)."""

    __slots__ = ("received", "mid_line")

    def __init__(self) -> None:
        #: Characters received, complete lines or not.
        self.received = 0
        #: A line has begun and not ended: more of the log is certainly on its way.
        self.mid_line = False


class LineSplitter:
    """Splits streamed text into lines (without their ``\\r\\n``), each cut at ``limit``
    characters with a note of how much was dropped, in time linear in the text: the engine
    sends a long line as 16 KiB frames without a newline."""

    def __init__(self, limit: int = MAX_LOG_LINE) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0
        self._cut = 0

    def feed(self, chunk: str) -> list[str]:
        """The lines that ``chunk`` completes."""
        lines = []
        start = 0
        while (end := chunk.find("\n", start)) >= 0:
            self._take(chunk, start, end)
            lines.append(self._line())
            start = end + 1
        self._take(chunk, start, len(chunk))
        return lines

    @property
    def mid_line(self) -> bool:
        """Part of a line was fed and its end was not."""
        return bool(self._parts or self._cut)

    def close(self) -> str:
        """The last line, if the text did not end with a newline (else ``""``)."""
        return self._line()

    def _take(self, chunk: str, start: int, end: int) -> None:
        room = self._limit - self._size
        if end - start > room:
            self._cut += end - start - room
            end = start + room
        if end > start:
            self._parts.append(chunk[start:end])
            self._size += end - start

    def _line(self) -> str:
        line = "".join(self._parts).rstrip("\r")
        if self._cut:
            line += f" [log line cut: {self._cut} more characters]"
        self._parts, self._size, self._cut = [], 0, 0
        return line
