"""The soak's short form: a steady load against one worker process, its fds and memory sampled."""

from __future__ import annotations

from pathlib import Path

import pytest

from drills.soak import SoakConfig, run_soak, summary_lines

pytestmark = [pytest.mark.broker, pytest.mark.rabbitmqctl, pytest.mark.timeout(120)]

RSS_LIMIT_MIB = 150  # the worker idles at ~60 MiB; benchmarks peaked at 66 MiB over 20,000 events
# Open fds other than the DialNexa connection pool (which opens and closes keep-alive connections
# with the load, up to the concurrency) may move by a socket or two, never climb with the load.
FD_SPREAD_LIMIT = 2
CONCURRENCY = 16  # the worker's default


async def test_steady_load_keeps_fds_flat_and_memory_bounded(tmp_path: Path) -> None:
    """25 s at 100 events/s: every event processed, fds flat in the second half, RSS bounded."""
    # A small terminal cache fills within seconds, so its growth is over before the second half.
    config = SoakConfig(
        minutes=25 / 60, rate=100, interval_s=0.5, terminal_cache_size=1_000, out_dir=tmp_path
    )
    result = await run_soak(config)
    report = "\n".join(summary_lines(result))
    assert not result.problems, report
    assert result.processed == result.published >= 2_400, report
    half = result.second_half()
    assert len(half) >= 15, report
    other_fds = [s.fds - s.http_fds for s in half]
    assert max(other_fds) - min(other_fds) <= FD_SPREAD_LIMIT, report
    assert max(s.http_fds for s in half) <= CONCURRENCY, report
    assert result.peak_rss_kib / 1024 < RSS_LIMIT_MIB, report
    # Tasks follow the messages in flight (two queues x prefetch 2 x concurrency, each with a task
    # and up to 3 workflow tasks here), not the messages seen.
    assert max(s.tasks for s in half) <= 2 * 2 * CONCURRENCY * (1 + 3) + 32, report
    assert result.exit_code == 0, report
    assert result.csv_path is not None and result.csv_path.read_text().count("\n") == len(result.samples) + 1
