"""The launch flow's launcher when pools are on: a waiting pool server if there is one.

The flow does not change: it has sent ``built`` and ``launching`` and holds the launch's place
under the quotas while this runs, so a pooled launch counts like any other, and the server is
labelled claimed before the place is given back. A launch for a logged-in user never takes a
pool server (pools are off with ``auth_enabled``; this is a second lock on that door).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Unpack

from ..errors import SwarmbinderError
from ..events import BuildEvent
from ..launcher import ServerRequest
from .manager import PoolManager, Spawner

log = logging.getLogger(__name__)


class PooledLauncher:
    """A :class:`~swarmbinder.launch_flow.ServerLauncher` over ``cold`` and ``pools``."""

    def __init__(self, cold: Spawner, pools: PoolManager) -> None:
        self._cold = cold
        self._pools = pools

    def launch(self, image: str, **request: Unpack[ServerRequest]) -> AsyncIterator[BuildEvent]:
        return self._launch(image, request)

    async def _launch(self, image: str, request: ServerRequest) -> AsyncGenerator[BuildEvent, None]:
        if request.get("username") is None:
            self._pools.notice_launch(request["provider_spec"], request["repo_url"], image)
            try:
                handed = await self._pools.hand_out(image)
            except SwarmbinderError as exc:
                # the pool is a shortcut: when it cannot answer, the cold launch still can
                log.warning("warm pools: hand-out of %s failed: %s", image, exc)
                handed = None
            if handed is not None:
                yield BuildEvent.ready(
                    url=handed.url,
                    token=handed.token,
                    image=image,
                    repo_url=request["repo_url"],
                    binder_ref_url=request["ref_url"],
                    binder_launch_host=request["binder_launch_host"],
                    binder_request=request["binder_request"],
                    binder_persistent_request=request["binder_persistent_request"],
                    binder_client_ip=request.get("binder_client_ip", ""),
                )
                return
        events = self._cold.launch(image, **request)
        try:
            async for event in events:
                yield event
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
