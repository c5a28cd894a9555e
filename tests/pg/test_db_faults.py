"""Database faults under a running service: connections killed mid-operation, statements timing out
behind a lock, a commit whose acknowledgement is lost. Each time the collector reports the failure,
recovers by itself, and its totals end equal to what is stored: nothing lost, nothing doubled.

A full server restart is not done here: the tests share one Postgres server (embedded or
DATABASE_URL), which other tests use concurrently with this one's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import aiohttp
import psycopg

from exporter.commands.service import Service
from tests.e2e.test_exactly_once import stored_tokens, write_runs
from tests.helpers.support import DEADLINE, eventually, more_polls
from tests.pg.test_collect_e2e import make_service

KILL = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name LIKE 'agno-exporter%%' AND datname = current_database() AND pid <> pg_backend_pid()")


def truth(db_url: str) -> tuple[int, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM ai.agno_runs WHERE status IN ('COMPLETED', 'ERROR', 'CANCELLED')"
                           ).fetchone()
        assert row is not None
        return int(row[0]), stored_tokens(conn)


def exported(service: Service) -> tuple[int, int]:
    """(runs, input + output tokens) held in memory, i.e. what /metrics shows."""
    runs = sum(s.total for s in service.store.series("agno_runs").values())
    return int(runs), exported_io_tokens(service)


def exported_io_tokens(service: Service) -> int:
    """input + output tokens (what stored_tokens sums; cache and reasoning are parts of those)."""
    return int(sum(s.total for labels, s in service.store.series("agno_tokens").items()
                   if labels[-1] in ("input", "output")))


def sample(service: Service, name: str, **labels: str) -> float:
    v = service.registry.get_sample_value(name, labels or None)
    return float(v or 0.0)


def poll_errors(service: Service) -> float:
    return sum(sample(service, "agno_exporter_poll_errors_total", reason=r) for r in ("database", "query", "state"))


async def wait_truth(service: Service, db_url: str, timeout: float = DEADLINE) -> tuple[int, int]:
    want = truth(db_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = exported(service)
        if got == want and service.collector.ready:
            return want
        assert got[0] <= want[0], f"counted {got[0]} runs, only {want[0]} stored: a run was counted twice"
        await asyncio.sleep(0.05)
    raise AssertionError(f"exported (runs, tokens) {exported(service)}"
                         f" != stored {want}")


class ReadyzWatcher:
    """Hits /readyz every 20 ms and remembers the statuses it saw."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[int] = []
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
            while True:
                try:
                    async with s.get(f"http://127.0.0.1:{self.port}/readyz") as r:
                        self.statuses.append(r.status)
                except aiohttp.ClientError:
                    self.statuses.append(0)
                await asyncio.sleep(0.02)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def terminate_exporter_backends(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        return len(conn.execute(KILL).fetchall())


def test_backends_terminated_while_runs_are_written(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 3))
    recoveries: list[float] = []

    async def main() -> None:
        service = make_service(db_url)
        await service.start()
        watcher = ReadyzWatcher(service.port)
        watcher.start()
        try:
            await wait_truth(service, db_url)
            # More runs are written by agno in another thread while the exporter's backends are killed.
            writer = threading.Thread(target=lambda: asyncio.run(write_runs(db_url, sim_url, 6)), daemon=True)
            writer.start()
            up_zero_seen = False
            kills = 0
            while writer.is_alive() or kills < 5:
                errors_before = poll_errors(service)
                t_kill = time.time()
                killed = terminate_exporter_backends(db_url)
                assert killed >= 1, "no exporter backend to terminate"
                kills += 1
                # Wait for the failure to be noticed, then for the next successful poll.
                deadline = time.monotonic() + DEADLINE
                while time.monotonic() < deadline:
                    if sample(service, "agno_exporter_up") == 0:
                        up_zero_seen = True
                    if (poll_errors(service) > errors_before
                            and sample(service, "agno_exporter_last_success_timestamp_seconds") > t_kill
                            and sample(service, "agno_exporter_up") == 1):
                        recoveries.append(
                            sample(service, "agno_exporter_last_success_timestamp_seconds") - t_kill)
                        break
                    await asyncio.sleep(0.005)
                else:
                    raise AssertionError(f"no recovery after kill {kills} (poll errors {poll_errors(service)})")
                await asyncio.sleep(0.3)
            await asyncio.to_thread(writer.join, 60)
            assert not writer.is_alive()
            runs, _ = await wait_truth(service, db_url)
            assert runs == 9
            assert up_zero_seen or poll_errors(service) >= kills
            assert sample(service, "agno_exporter_poll_errors_total", reason="database") >= kills
            assert sample(service, "agno_exporter_runs_collected_total", run_type="agent") == runs
            await watcher.stop()
            # /readyz went 503 while the database was lost, if a scrape fell into the window; never an error page.
            assert set(watcher.statuses) <= {200, 503}, set(watcher.statuses)
            assert watcher.statuses[-1] == 200
            print(f"\n{kills} kills, {poll_errors(service):g} poll errors, /readyz 503 seen "
                  f"{watcher.statuses.count(503)} times; recovery (kill -> next "
                  f"successful poll) s: min {min(recoveries):.3f} max {max(recoveries):.3f} "
                  f"mean {sum(recoveries) / len(recoveries):.3f}: {[round(r, 3) for r in recoveries]}")
        finally:
            await watcher.stop()
            await service.stop()
        # A restarted process loads the same totals and counts nothing again.
        again = make_service(db_url)
        await again.start()
        try:
            await wait_truth(again, db_url)
            await more_polls(again.registry)
            assert sample(again, "agno_exporter_runs_collected_total", run_type="agent") == 0
        finally:
            await again.stop()

    asyncio.run(main())
    assert recoveries  # each kill was followed by a successful poll within the deadline (measured above)


def test_statement_timeout_behind_a_lock(db_url: str, sim_url: str) -> None:
    asyncio.run(write_runs(db_url, sim_url, 3))

    async def main() -> None:
        locker = await psycopg.AsyncConnection.connect(db_url)
        try:
            await locker.execute("LOCK TABLE ai.agno_runs IN ACCESS EXCLUSIVE MODE")
            service = make_service(db_url, database={"statement_timeout": "200ms"})
            await service.start()
            try:
                await eventually(lambda: poll_errors(service) >= 1 and sample(service, "agno_exporter_up") == 0,
                                 "a poll timing out behind the lock")
                errors = {r: sample(service, "agno_exporter_poll_errors_total", reason=r)
                          for r in ("database", "query", "state")}
                assert errors["database"] + errors["query"] >= 1, errors
                assert sample(service, "agno_exporter_up") == 0
                assert not service.collector.ready
                assert exported(service)[0] == 0
                await locker.rollback()  # release the lock
                t_release = time.monotonic()
                await wait_truth(service, db_url)
                print(f"\nstatement timeout: {errors} poll errors while locked; caught up "
                      f"{time.monotonic() - t_release:.3f}s after the lock was released")
                await asyncio.to_thread(asyncio.run, write_runs(db_url, sim_url, 2))
                runs, _ = await wait_truth(service, db_url)
                assert runs == 5
            finally:
                await service.stop()
        finally:
            await locker.close()

    asyncio.run(main())


def test_lost_commit_acknowledgement_is_not_a_lost_count(db_url: str, sim_url: str) -> None:
    """The state transaction commits but the client never hears so (connection dropped right after COMMIT).

    The runs are durably counted; the next poll finds them known. The totals in memory must still
    reach the durable ones (the exporter must not keep exporting less than it has counted).
    """
    asyncio.run(write_runs(db_url, sim_url, 2))

    async def main() -> None:
        service = make_service(db_url)
        state = service.collector.state
        original = state.commit_batch
        dropped: list[int] = []

        async def commit_then_drop(records: Any, *args: Any, **kw: Any) -> Any:
            result = await original(records, *args, **kw)
            if result.new_records and not dropped:
                dropped.append(len(result.new_records))
                await state.db.close()
                raise psycopg.OperationalError("server closed the connection unexpectedly (simulated, after COMMIT)")
            return result

        state.commit_batch = commit_then_drop  # type: ignore[method-assign]
        await service.start()
        try:
            await wait_truth(service, db_url)
            assert dropped == [2]
            assert sample(service, "agno_exporter_poll_errors_total", reason="database") >= 1
        finally:
            await service.stop()

    asyncio.run(main())


def test_commit_failing_while_the_next_chunk_loads(db_url: str, sim_url: str) -> None:
    """The collector commits one chunk while it fetches and parses the next. A commit that fails then
    ends the poll without counting the chunk in flight; the next poll counts everything exactly once,
    on connections left usable (no query of the abandoned chunk still running on them)."""
    asyncio.run(write_runs(db_url, sim_url, 5))

    async def main() -> None:
        service = make_service(db_url, collector={"batch_size": 1})  # five chunks in one poll
        collector = service.collector
        original = collector.state.commit_batch
        calls: list[int] = []
        loads_in_flight: list[bool] = []
        loads_started: list[bool] = []
        original_load = collector._load

        async def load(*args: Any) -> Any:
            loads_started.append(True)
            loads_in_flight.append(True)
            try:
                return await original_load(*args)
            finally:
                loads_in_flight.pop()

        async def failing_second(records: Any, *args: Any, **kw: Any) -> Any:
            calls.append(len(records))
            if len(calls) == 2:
                await asyncio.sleep(0.05)  # the commit's round trip, during which the next chunk loads
                assert len(loads_started) == 3, "the next chunk should be loading while this one commits"
                raise psycopg.OperationalError("server closed the connection unexpectedly (simulated)")
            return await original(records, *args, **kw)

        collector.state.commit_batch = failing_second  # type: ignore[method-assign]
        collector._load = load  # type: ignore[method-assign]
        with contextlib.suppress(psycopg.OperationalError):
            await collector.poll_once()
            raise AssertionError("the poll should have failed")
        assert exported(service)[0] == 1  # the first chunk only; nothing of the failed one in memory
        assert not loads_in_flight
        collector.started = False  # what the poll loop does after a failure: reload the durable state
        result = await collector.poll_once()
        assert result.counted == 4
        assert exported(service) == truth(db_url)
        await service.stop()

    asyncio.run(main())
