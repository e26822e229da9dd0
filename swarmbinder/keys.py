"""Typed keys for what the application shares between handlers and background tasks.

One place for every ``web.AppKey``: handlers read ``request.app[CONFIG]``, never string keys.
"""

from __future__ import annotations

from aiohttp import web

from .admission import Admission
from .config import Config
from .launch_flow import LaunchFlow

CONFIG = web.AppKey("config", Config)
#: Decides whether a /build request may go on (bans, build token, rate limit).
ADMISSION = web.AppKey("admission", Admission)
#: Runs one /build request as events.
FLOW = web.AppKey("flow", LaunchFlow)
