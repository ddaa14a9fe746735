"""`python -m drills.instrumented run`: the worker exactly as `python -m service run`, plus one gauge.

The gauge `canceller_drill_asyncio_tasks` is the number of tasks alive in the worker's event loop,
read when /metrics is scraped (the scrape runs on that loop). The service does not export it; the
soak drill needs it to show that tasks do not pile up. Nothing else differs from the real worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.__main__ import main

TASKS_GAUGE = "canceller_drill_asyncio_tasks"


class TaskCount(Collector):
    """Tasks alive in the running event loop (nothing when collected outside a loop)."""

    def collect(self) -> Iterator[Metric]:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        yield GaugeMetricFamily(
            TASKS_GAUGE, "asyncio tasks alive in the worker", value=len(asyncio.all_tasks(loop))
        )


if __name__ == "__main__":
    REGISTRY.register(TaskCount())
    raise SystemExit(main())
