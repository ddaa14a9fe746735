"""The benchmark tools measure what they say they measure."""

from __future__ import annotations

from bench.core import WARM_UP, InstantPublisher, measure


async def test_core_benchmark_takes_the_success_path() -> None:
    """Every event of bench.core is cancelled and published (none dead-lettered), and each round
    yields a positive CPU figure."""
    publisher = InstantPublisher()
    figures = await measure(events=200, rounds=2, publisher=publisher)
    assert publisher.published == WARM_UP + 2 * 200
    assert len(figures) == 2
    assert all(f > 0 for f in figures)
