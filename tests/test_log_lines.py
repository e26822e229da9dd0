"""Service log lines as the Swarm adapter passes them on: split where the engine's frames
are not, and cut when one is longer than anything a build needs (a repository can make
repo2docker quote a file of any size in one line)."""

from __future__ import annotations

import time

from swarmbinder.loglines import MAX_LOG_LINE, LineSplitter


def test_lines_are_joined_across_frames_and_split_within_them() -> None:
    splitter = LineSplitter()
    assert splitter.feed("first li") == []
    assert splitter.feed("ne\r\nsecond\n\nthi") == ["first line", "second", ""]
    assert splitter.feed("rd") == []
    assert splitter.close() == "third"
    assert splitter.close() == ""


def test_a_long_line_is_cut_and_says_how_much_was_dropped() -> None:
    splitter = LineSplitter(limit=10)
    assert splitter.feed("0123456") == []
    assert splitter.feed("789abcdef\nnext") == ["0123456789 [log line cut: 6 more characters]"]
    assert splitter.close() == "next"


def test_a_100_mb_line_in_16_kib_frames_is_read_in_linear_time() -> None:
    # Joining the frames and splitting again at each one copied the whole line every time:
    # 45 s of one CPU for 40 MB, growing with the square of the length.
    frame = "X" * 16384
    splitter = LineSplitter()
    started = time.perf_counter()
    for _ in range(6400):
        assert splitter.feed(frame) == []
    (line,) = splitter.feed("\n")
    assert time.perf_counter() - started < 2
    assert line.startswith("X" * MAX_LOG_LINE + " [log line cut: ")
    assert line.endswith(f"{6400 * 16384 - MAX_LOG_LINE} more characters]")


def test_mid_line_says_whether_a_line_has_begun_and_not_ended() -> None:
    splitter = LineSplitter(limit=10)
    assert not splitter.mid_line
    splitter.feed("abc")
    assert splitter.mid_line
    splitter.feed("d" * 50)  # past the limit: cut, still unfinished
    assert splitter.mid_line
    assert splitter.feed("\nnext") == ["abcddddddd [log line cut: 43 more characters]"]
    assert splitter.mid_line
    splitter.feed("\n")
    assert not splitter.mid_line
