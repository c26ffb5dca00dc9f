"""The daemon's component lifecycle: started in order, stopped in reverse, and a failure on either
side never leaves a started component running."""

import asyncio
import threading
import time

import pytest

from jouletrace.exporter.ledger.ledger import Ledger
from jouletrace.exporter.lifecycle import Components, Step, Worker


def recorder(log: list, name: str, fail: str = "") -> Step:
    async def start():
        if fail == "start":
            raise RuntimeError(f"{name} cannot start")
        log.append(f"start {name}")

    async def stop():
        log.append(f"stop {name}")
        if fail == "stop":
            raise RuntimeError(f"{name} cannot stop")
    return Step(name, start, stop)


def test_started_in_order_and_stopped_in_reverse():
    log: list[str] = []
    c = Components()
    for name in "abc":
        c.add(recorder(log, name))
    asyncio.run(c.start())
    asyncio.run(c.stop())
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_a_failed_start_stops_those_already_started_and_raises():
    log: list[str] = []
    c = Components()
    c.add(recorder(log, "a"))
    c.add(recorder(log, "b", fail="start"))
    c.add(recorder(log, "c"))
    with pytest.raises(RuntimeError, match="b cannot start"):
        asyncio.run(c.start())
    assert log == ["start a", "stop a"]


def test_a_failed_stop_still_stops_the_others():
    log: list[str] = []
    c = Components()
    for name, fail in (("a", ""), ("b", "stop"), ("c", "")):
        c.add(recorder(log, name, fail))
    asyncio.run(c.start())
    asyncio.run(c.stop())
    assert log[3:] == ["stop c", "stop b", "stop a"]


def test_a_worker_runs_until_stopped_then_calls_after_stop():
    ran, after = threading.Event(), []

    def run(stop: threading.Event) -> None:
        ran.set()
        stop.wait()

    w = Worker("loop", run, after_stop=lambda: after.append(w.alive))

    async def go():
        await w.start()
        assert ran.wait(5) and w.alive
        await w.stop()
    asyncio.run(go())
    assert after == [False] and not w.alive


def test_a_failing_attribution_pass_is_counted_and_the_next_one_runs(monkeypatch):
    ledger = Ledger([])
    calls = []

    def settle(final=False):
        calls.append(final)
        if len(calls) == 1:
            raise ValueError("a bad pass")
    monkeypatch.setattr(ledger, "settle", settle)
    monkeypatch.setattr("jouletrace.exporter.ledger.ledger.SETTLE_PERIOD_S", 0.01)
    stop = threading.Event()
    t = threading.Thread(target=ledger.run, args=(stop,))
    t.start()
    deadline = time.monotonic() + 30
    while len(calls) < 3 and time.monotonic() < deadline:
        stop.wait(0.01)
    stop.set()
    t.join(5)
    assert ledger.pass_errors == 1 and len(calls) >= 3
