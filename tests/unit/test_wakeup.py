"""How the poll loop waits between polls with the wake-up (:class:`exporter.ingest.notify.Wakeup`), its
clock and sleep injected: a burst of notifications starts one poll, polls keep their distance."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from exporter.ingest.notify import Wakeup
from exporter.sinks.prometheus.families import WakeSelfMetrics


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def wakeups(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("agno_exporter_wakeups_total", {"reason": reason}) or 0.0


def test_a_burst_of_notifications_starts_one_poll_and_polls_keep_their_distance() -> None:
    async def main() -> None:
        registry, t = CollectorRegistry(), FakeTime()
        w = Wakeup(WakeSelfMetrics(registry), min_interval=0.05, clock=t.clock, sleep=t.sleep)
        for _ in range(100):  # a burst while the loop was waiting
            w.wake()
        await w.wait(3600)
        assert not w.pending and wakeups(registry, "notify") == 1 and t.slept == []  # no poll started before
        t.now += 0.01  # the poll took 10 ms; a run committed meanwhile notifies
        w.wake()
        assert w.pending  # not lost: the poll's snapshot may have missed that commit
        await w.wait(3600)
        assert wakeups(registry, "notify") == 2
        assert t.slept == [pytest.approx(0.04)]  # 50 ms after the previous poll started, not sooner
        t.now += 1.0
        w.wake("listen")
        w.wake()  # the reason of the first wake-up of a burst is counted
        await w.wait(3600)
        assert wakeups(registry, "listen") == 1 and wakeups(registry, "notify") == 2
        assert len(t.slept) == 1  # long after the previous poll: no wait
        await w.wait(0.01)  # nothing pending: the interval passes
        assert wakeups(registry, "interval") == 1

    asyncio.run(main())
