from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pg_support import open_store_at

from swarmbinder.policy.ratelimit import RateLimiter, RateLimitExceeded, StoreWindows


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


MakeLimiter = Callable[..., RateLimiter]


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def windows_where(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return ":memory:" if request.param == "sqlite" else "memory"


@pytest.fixture
async def make_limiter(windows_where: str) -> AsyncIterator[MakeLimiter]:
    """Limiters counting in memory, and in the store (SQLite, and a real PostgreSQL): the
    semantics are the same wherever the windows are kept."""
    if windows_where == "memory":
        yield RateLimiter
        return
    store = await open_store_at(windows_where)

    def make(*args: Any, **kwargs: Any) -> RateLimiter:
        return RateLimiter(*args, windows=StoreWindows(store), **kwargs)

    yield make
    await store.close()


async def test_limit_per_window_with_binderhubs_message(make_limiter: MakeLimiter) -> None:
    clock = Clock()
    limiter = make_limiter(3, 60, clock=clock)
    statuses = [await limiter.check("198.51.100.1") for _ in range(3)]
    assert [s.remaining for s in statuses if s] == [2, 1, 0]
    clock.now += 20
    with pytest.raises(RateLimitExceeded) as info:
        await limiter.check("198.51.100.1")
    error = info.value
    assert error.status_code == 429
    assert error.user_message == "Rate limit exceeded. Try again in 60 seconds."
    assert error.retry_after == 40
    assert error.headers()["Retry-After"] == "40"
    # Another address has its own allowance.
    assert await limiter.check("198.51.100.2") is not None


async def test_headers_of_an_allowed_request(make_limiter: MakeLimiter) -> None:
    clock = Clock(5000.7)
    status = await make_limiter(10, 3600, clock=clock).check("a")
    assert status is not None
    assert status.headers() == {
        "X-RateLimit-Remaining": "9",
        "X-RateLimit-Reset": str(5000 + 3600),
        "X-RateLimit-Limit": "10",
    }


async def test_refused_requests_keep_counting_and_the_window_does_not_slide(
    make_limiter: MakeLimiter,
) -> None:
    clock = Clock()
    limiter = make_limiter(1, 100, clock=clock)
    await limiter.check("a")
    for excess in (1, 2, 3):
        clock.now += 10
        with pytest.raises(RateLimitExceeded) as info:
            await limiter.check("a")
        assert info.value.excess == excess
    # The window started at the first request, so it resets 100 s after it, not after the last.
    clock.now += 71
    status = await limiter.check("a")
    assert status is not None and status.remaining == 0


async def test_build_token_and_zero_limit_skip_the_limit(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(1, 100, clock=Clock())
    await limiter.check("a")
    assert await limiter.check("a", have_build_token=True) is None
    off = RateLimiter(0, 100, clock=Clock())
    assert [await off.check("a") for _ in range(50)] == [None] * 50
    assert len(off) == 0


async def test_call_form_raises_like_check(make_limiter: MakeLimiter) -> None:
    limiter = make_limiter(1, 100, clock=Clock())
    await limiter("a")
    with pytest.raises(RateLimitExceeded):
        await limiter("a")


async def test_memory_is_bounded_by_max_keys_oldest_windows_first() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 1000, clock=clock, max_keys=3)
    for key in ("a", "b", "c", "d"):
        clock.now += 1
        await limiter.check(key)
    assert len(limiter) == 3
    # "a" was forgotten, so it is allowed again; "d" is still limited.
    assert await limiter.check("a") is not None
    with pytest.raises(RateLimitExceeded):
        await limiter.check("d")


async def test_expired_windows_are_cleaned() -> None:
    clock = Clock()
    limiter = RateLimiter(5, 60, clock=clock, clean_seconds=120)
    for i in range(100):
        await limiter.check(f"10.0.0.{i}")
    assert len(limiter) == 100
    clock.now += 200
    await limiter.check("new")
    assert len(limiter) == 1


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1, 60)
    with pytest.raises(ValueError):
        RateLimiter(1, 0)
