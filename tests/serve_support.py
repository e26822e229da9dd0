"""``swarmbinder serve`` refusing a config at start-up, as an operator sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def serve_refusal(tmp_path: Path, config_text: str) -> str:
    """Start ``swarmbinder serve`` with a config file holding ``config_text``; assert it exits
    with code 2 and one line on stderr, and return that line."""
    config = tmp_path / "binder.yaml"
    config.write_text(config_text)
    proc = subprocess.run(
        [sys.executable, "-m", "swarmbinder", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]
