"""One hand-written fake DialNexa API for the pure core's tests."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable

from service.dialnexa import CancelResult, DialNexaError

Answer = CancelResult | DialNexaError


class FakeApi:
    """Answers scripted per workflow id (FIFO); unscripted ids are cancelled. Records every call."""

    def __init__(self) -> None:
        self.scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self.calls: list[str] = []

    def script(self, workflow_id: str, answers: Iterable[Answer]) -> None:
        self.scripts[workflow_id].extend(answers)

    async def cancel(self, workflow_id: str, start_by: float = math.inf) -> CancelResult:
        self.calls.append(workflow_id)
        queue = self.scripts.get(workflow_id)
        answer: Answer = queue.popleft() if queue else CancelResult(workflow_id, "cancelled", "cancelled")
        if isinstance(answer, DialNexaError):
            raise answer
        return answer


class Sink:
    """Collects what the core emits."""

    def __init__(self) -> None:
        self.emitted: list[CancelResult] = []

    async def __call__(self, result: CancelResult) -> None:
        self.emitted.append(result)
