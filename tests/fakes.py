"""One hand-written fake DialNexa API for the pure core's tests."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable

from service.core.ports import CancelResult, DialNexaError

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


class Announcing:
    """An `Announcer` that hands each result to `fn` (to refuse it, or to move a clock)."""

    def __init__(self, fn: Callable[[CancelResult], Awaitable[None]]) -> None:
        self._fn = fn

    async def workflow_cancelled(self, trigger: object, result: CancelResult) -> None:
        await self._fn(result)


class Sink:
    """The core's `Announcer`: collects what the core announces."""

    def __init__(self) -> None:
        self.emitted: list[CancelResult] = []

    async def workflow_cancelled(self, trigger: object, result: CancelResult) -> None:
        self.emitted.append(result)
