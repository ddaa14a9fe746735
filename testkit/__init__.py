"""Helpers shared by the tests, the benchmarks and the drills: CloudEvents built by the product's own
factory, waiting on conditions with deadlines, free ports, and child processes (the DialNexa
simulator, workers) with their logs.

Not part of the product: the wheel packages only `service`. Everything binds or connects to
loopback only, and every wait has a deadline.
"""

from testkit.events import campaign, complaint, encoded
from testkit.processes import (
    PYTHON,
    ROOT,
    Proc,
    SimProcess,
    answers_200,
    http_get,
    http_post,
    run_cmd,
    simulator_in_process,
    spawn,
    spawn_worker,
    wait_answering,
    worker_env,
)
from testkit.waiting import HOST, HarnessError, free_port, wait_until

__all__ = [
    "HOST",
    "PYTHON",
    "ROOT",
    "HarnessError",
    "Proc",
    "SimProcess",
    "answers_200",
    "campaign",
    "complaint",
    "encoded",
    "free_port",
    "http_get",
    "http_post",
    "run_cmd",
    "simulator_in_process",
    "spawn",
    "spawn_worker",
    "wait_answering",
    "wait_until",
    "worker_env",
]
