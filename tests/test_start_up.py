"""What start-up leaves: the garbage collector settled, the version printed and exported as a metric."""

from __future__ import annotations

import gc
import platform
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.__main__ import main
from service.app import GC_GEN0_THRESHOLD, settle_gc
from service.observe.metrics import Metrics, version


def test_settle_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    """After start-up the collector skips what exists by then and collects generation 0 less often."""
    before = gc.get_threshold()
    gc.unfreeze()  # an in-process worker run earlier in the session may have settled it already
    gc.set_threshold(700, before[1], before[2])  # CPython's default
    try:
        assert gc.get_freeze_count() == 0
        settle_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        assert GC_GEN0_THRESHOLD > 700
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_version_is_printed_and_exported(capsys: pytest.CaptureFixture[str]) -> None:
    """`workflow-canceller --version` prints the installed version; `canceller_build_info` carries it."""

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"workflow-canceller {version()}"
    assert version() != "unknown"
    registry = CollectorRegistry()
    Metrics.build(registry)
    assert (
        registry.get_sample_value(
            "canceller_build_info", {"version": version(), "python": platform.python_version()}
        )
        == 1.0
    )
    assert (Path(__file__).parent.parent / "service" / "py.typed").is_file()
