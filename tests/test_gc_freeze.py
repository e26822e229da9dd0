"""What start-up made is hidden from the garbage collector while the app runs, and only then."""

from __future__ import annotations

import gc

import pytest
from aiohttp import web

from swarmbinder.app import create_app, freeze_startup_objects
from swarmbinder.config import load_config


async def test_start_up_objects_are_frozen_while_the_app_runs_and_freed_after() -> None:
    gc.unfreeze()
    context = freeze_startup_objects(web.Application())
    await anext(context)
    assert gc.get_freeze_count() > 1000  # the modules' objects, at least
    with pytest.raises(StopAsyncIteration):
        await anext(context)
    assert gc.get_freeze_count() == 0


def test_the_freeze_comes_after_every_other_start_up_step() -> None:
    app = create_app(load_config(env={}, overrides={}))
    assert list(app.cleanup_ctx)[-1] is freeze_startup_objects
