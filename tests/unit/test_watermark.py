"""The low watermark (exporter.ingest.cursor), without Postgres: Watermark.advance on constructed snapshots.

The rule (cursor.py): after a poll that read everything from the previous watermark L,
L' = max(L, min(T, start of every writer)), a writer whose start is hidden counting as L, and a bound
older than T - max_lookback clamped to it (and reported). The Postgres tests (tests/pg/test_cursor.py)
check the same rule against real transactions; these check the arithmetic, case by case.
"""

from __future__ import annotations

import logging
import random

import pytest

from exporter.ingest.cursor import Advance, Watermark, WindowLog


def test_no_writer_moves_the_watermark_to_the_snapshot_time() -> None:
    wm = Watermark(low=100.0)
    assert wm.advance(200.0, []) == Advance(200.0, False, 0, None)
    assert wm.low == 200.0


def test_an_open_writer_holds_the_watermark_at_its_start() -> None:
    wm = Watermark(low=100.0)
    adv = wm.advance(200.0, [150.0, 180.0])
    assert adv == Advance(150.0, False, 0, 150.0)


def test_a_hidden_writer_holds_the_watermark_where_it_was() -> None:
    wm = Watermark(low=100.0)
    adv = wm.advance(200.0, [None, 180.0])
    assert adv == Advance(100.0, False, 1, 180.0)


def test_the_watermark_never_goes_back() -> None:
    wm = Watermark(low=100.0)
    # a writer that started before the previous watermark: every row it writes is read from L already
    adv = wm.advance(200.0, [50.0])
    assert adv.low == 100.0 and not adv.clamped and adv.oldest == 50.0


def test_a_writer_older_than_max_lookback_is_clamped_and_reported() -> None:
    wm = Watermark(low=0.0, max_lookback=60.0)
    adv = wm.advance(1000.0, [10.0])
    assert adv == Advance(940.0, True, 0, 10.0)
    # a hidden writer on a watermark far behind is clamped too
    wm = Watermark(low=10.0, max_lookback=60.0)
    assert wm.advance(1000.0, [None]) == Advance(940.0, True, 1, None)


def test_a_table_the_snapshot_did_not_watch_holds_the_watermark() -> None:
    from exporter.ingest.source import Snapshot

    snap = Snapshot(now=200.0, writers={("ai", "agno_runs"): ()})
    wm = Watermark(low=100.0)
    assert wm.advance(snap.now, snap.writers_of(("ai", "other"))).low == 100.0
    assert wm.advance(snap.now, snap.writers_of(("ai", "agno_runs"))).low == 200.0


@pytest.mark.parametrize("seed", range(20))
def test_the_rule_on_random_polls(seed: int) -> None:
    """On random snapshots: the watermark is monotone, never past the snapshot time nor any writer known to
    have started after it, and equal to the rule's value."""
    rnd = random.Random(seed)
    wm = Watermark(low=0.0, max_lookback=300.0)
    now = 1_000.0
    for _ in range(50):
        now += rnd.uniform(0.5, 30.0)
        writers: list[float | None] = [None if rnd.random() < 0.1 else now - rnd.uniform(0, 400) for _ in
                                       range(rnd.randint(0, 3))]
        before = wm.low
        adv = wm.advance(now, writers)
        bound = min([now, *[before if w is None else w for w in writers]])
        expected = max(before, now - 300.0) if bound < now - 300.0 else max(before, bound)
        assert adv.low == wm.low == expected
        assert before <= adv.low <= now
        assert adv.clamped == (bound < now - 300.0)
        assert adv.hidden == writers.count(None)


def test_window_log_says_each_episode_once(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_watermark")
    wl = WindowLog(logger, "ai.agno_runs", 60.0)
    with caplog.at_level(logging.INFO, logger="test_watermark"):
        wl.report(Advance(940.0, True, 0, 10.0), 1000.0)
        wl.report(Advance(950.0, True, 0, 10.0), 1010.0)  # same episode: nothing new
        wl.report(Advance(1020.0, False, 0, None), 1020.0)  # over: said once
        wl.report(Advance(1030.0, False, 1, None), 1030.0)  # a hidden writer: said once per process
        wl.report(Advance(1030.0, False, 1, None), 1040.0)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "open for 990 s" in messages[0] and "clamped to collector.max_lookback (60 s)" in messages[0]
    assert "within collector.max_lookback again" in messages[1]
    assert "pg_read_all_stats" in messages[2]
