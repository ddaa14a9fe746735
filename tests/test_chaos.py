"""The chaos drill's short form: combined faults against real processes, then the invariants.

About 1,000 messages; every fault kind from the simulator (5xx, timeouts, dropped connections,
429s), two broker cuts of the drill's own vhost, two SIGKILL-and-restarts and a period with two
competing worker processes (ended by another SIGKILL). The long form is `make chaos`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drills.chaos import INVALID_KINDS, ChaosConfig, report_lines, run_chaos

pytestmark = [pytest.mark.broker, pytest.mark.rabbitmqctl, pytest.mark.timeout(180)]


async def test_combined_faults_lose_nothing_and_keep_ids_stable(tmp_path: Path) -> None:
    """Under all faults at once every valid pair is published under one id; invalid input is in the DLQ."""
    # Timeouts and 429s are rarer in the long form; here they are frequent enough to happen surely.
    config = ChaosConfig(events=1_000, fault_timeout=0.01, fault_429=0.01, kills=2, cuts=2, out_dir=tmp_path)
    result = await run_chaos(config)
    report = "\n".join(report_lines(result))
    assert result.ok, report
    counts = result.counts
    assert counts["workflow-cancelled received"] >= counts["workflow/event pairs"] > 2_000, report
    assert all(counts["injected faults"][kind] >= 1 for kind in ("5xx", "timeout", "drop", "429")), report
    assert result.kills >= 3 and result.cuts == 2, report  # 2 kill-and-restart + the second worker's end
    assert result.two_workers_s > 0 and result.second_worker_processed > 0, report
    assert set(counts["invalid messages"]) == set(INVALID_KINDS), report
    assert counts["DLQ by reason"] == {
        "invalid": sum(counts["invalid messages"].values()) + counts["DLQ copies beyond one"]
    }, report
    assert counts["unknown (404)"] > 0 and counts["already completed"] > 0, report
