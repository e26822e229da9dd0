"""Typed keys for what the application shares between handlers and background tasks.

One place for every ``web.AppKey``: handlers read ``request.app[CONFIG]``, never string keys.
"""

from __future__ import annotations

from aiohttp import web

from .config import Config

CONFIG = web.AppKey("config", Config)
