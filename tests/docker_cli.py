"""The docker command line, off the event loop, for async tests that inspect what the engine
made (a blocking subprocess there would stall the app or client under test)."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def adocker(*args: str) -> str:
    """Run ``docker ARGS``; its stdout, or AssertionError with its stderr."""
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {err.decode(errors='replace')}")
    return out.decode()


async def adocker_json(*args: str) -> Any:
    return json.loads(await adocker(*args))
