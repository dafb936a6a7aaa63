"""The server's deadline cap (``api.deadline_cap.DeadlineCap``): one timer for every capped
call, so these check what each call relies on — a call past the cap ends with
``DeadlineExceeded``, however many others run, started or ended around it; a call that ends
in time is never cancelled; a caller's shorter deadline is left to gRPC; a cancellation
from elsewhere stays a cancellation. Deadlines are waited for as conditions, with room."""

from __future__ import annotations

import asyncio

import pytest

from quota_authority.api.deadline_cap import TICK_S, DeadlineCap
from quota_authority.engine import deadlines
from quota_authority.errors import DeadlineExceeded

CAP_S = 0.2


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_call_past_the_cap_ends_with_deadline_exceeded_after_the_cap():
    cap = DeadlineCap(CAP_S)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DeadlineExceeded, match="retry with the same request_id"):
        await cap.run(forever, None)
    assert loop.time() - started >= CAP_S


async def test_every_stuck_call_ends_while_calls_around_them_end_in_time():
    """Stuck calls started at different times each end past their own cap; quick calls
    started before, between and after them answer and are never cancelled."""
    cap = DeadlineCap(CAP_S)

    async def quick(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def stuck_after(delay_s: float) -> float:
        await asyncio.sleep(delay_s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(DeadlineExceeded):
            await cap.run(forever, None)
        return loop.time() - started

    quick_before = [await cap.run(lambda n=n: quick(n), None) for n in range(50)]
    stuck = [asyncio.ensure_future(stuck_after(d)) for d in (0, 0.01, 0.05, 0.12)]
    quick_between = await asyncio.gather(*(cap.run(lambda n=n: quick(n), None) for n in range(50)))
    lasted = await asyncio.wait_for(asyncio.gather(*stuck), timeout=30)
    quick_after = [await cap.run(lambda n=n: quick(n), None) for n in range(50)]

    assert quick_before == list(range(50)) == quick_between == quick_after
    assert all(s >= CAP_S for s in lasted), lasted
    assert not cap._running, "nothing left behind"


async def test_a_call_runs_under_the_cap_as_its_published_deadline():
    cap = DeadlineCap(CAP_S)
    loop = asyncio.get_running_loop()

    async def deadline() -> float | None:
        return deadlines.current_deadline()

    before = loop.time()
    published = await cap.run(deadline, None)
    assert published is not None and before + CAP_S <= published <= loop.time() + CAP_S


async def test_a_callers_shorter_deadline_is_published_and_left_to_grpc():
    """With a caller's deadline inside the cap, the cap sets no timer: gRPC cancels the
    call at the caller's deadline, and the call sees that deadline."""
    cap = DeadlineCap(10.0)
    loop = asyncio.get_running_loop()

    async def deadline() -> float | None:
        assert not cap._running, "not capped by the server's timer"
        return deadlines.current_deadline()

    before = loop.time()
    published = await cap.run(deadline, 0.5)
    assert published is not None and before + 0.5 <= published <= loop.time() + 0.5


async def test_a_cancellation_from_elsewhere_stays_a_cancellation():
    """A call cancelled by its caller (or a server stopping) before the cap is not turned
    into DeadlineExceeded."""
    cap = DeadlineCap(CAP_S)
    running = asyncio.Event()

    async def work() -> None:
        running.set()
        await forever()

    call = asyncio.ensure_future(cap.run(work, None))
    await running.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert not cap._running


async def test_one_timer_serves_many_calls():
    """Many short calls arm the timer once (again only each time it fires while calls
    run, at most every TICK_S), not once a call."""
    cap = DeadlineCap(CAP_S)
    armed = 0
    loop = asyncio.get_running_loop()
    call_at = loop.call_at

    def counting_call_at(when, callback, *args, **kwargs):  # type: ignore[no-untyped-def]
        # The loop is the session's: servers and pools of other tests arm timers on it
        # too, so only the cap's own timer is counted.
        nonlocal armed
        if callback == cap._expire:
            armed += 1
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    started = loop.time()
    try:
        for _ in range(1000):
            await cap.run(_yield, None)
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
    elapsed = loop.time() - started
    assert armed <= 2 + elapsed / TICK_S, (armed, elapsed)
    assert armed < 1000


async def _yield() -> None:
    await asyncio.sleep(0)
