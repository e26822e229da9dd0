#!/usr/bin/env python3
"""Secret scrubbing: the cost of one log line, and of a change to the set of secrets.

Every build log line becomes an event that is scrubbed once (``swarmbinder.scrub``), and every
stored line is scrubbed once more, so the goal is a few microseconds a line: a 200-character
line with 20 secrets (each of 32 random characters, in all their derived forms) in under
50 us. A change of the set (a build's credential minted or expired) recompiles one pattern at
the next scrub: under 50 ms for 20 secrets. Needs no test ground.

    bench/scrub.py [--secrets 20] [--lines 20000]
"""

from __future__ import annotations

import argparse
import secrets
import time

import benchlib as b

from swarmbinder.scrub import Scrubber, secret_forms

LINE = (
    '{"message": "Step 3/12 : RUN pip install --no-cache-dir -r requirements.txt && '
    'echo done with the thing ok", "phase": "building"} '
) * 2


def measure(count: int, lines: int) -> dict[str, object]:
    values = [secrets.token_urlsafe(24) for _ in range(count)]
    scrubber = Scrubber(values)
    started = time.perf_counter()
    scrubber.scrub("x")
    compile_ms = (time.perf_counter() - started) * 1e3
    line = LINE[:200]
    per_line = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(lines):
            scrubber.scrub(line)
        per_line.append((time.perf_counter() - started) / lines * 1e6)
    return {
        "secrets": count,
        "forms": sum(len(secret_forms(v)) for v in values),
        "compile_ms": round(compile_ms, 2),
        "us_per_200_char_line": b.summary(per_line),
        "clean_line_unchanged": scrubber.scrub(line) == line,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secrets", type=int, default=20, help="known secrets (20)")
    parser.add_argument("--lines", type=int, default=20000, help="lines per sample (20000)")
    args = parser.parse_args()
    started, load_before = time.monotonic(), b.loadavg()
    result = measure(args.secrets, args.lines)
    b.emit("scrub", result, started=started, load_before=load_before)


if __name__ == "__main__":
    main()
