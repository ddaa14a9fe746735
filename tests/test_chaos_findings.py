"""Defects the chaos drill found, reproduced deterministically (drills/regressions.py), stay fixed."""

from __future__ import annotations

import pytest

from drills import regressions
from drills.common import Vhost

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


async def test_publish_on_a_channel_closed_by_a_cut_is_a_broker_error() -> None:
    """A broker cut is a lost session for the publisher, not an internal error of the message."""
    async with Vhost("canceller-regressions") as vhost:
        assert await regressions.closed_channel_publish(vhost) is None


async def test_a_cut_during_session_setup_does_not_stop_the_worker() -> None:
    """A cut between connecting and consuming makes the worker reconnect, not exit."""
    async with Vhost("canceller-regressions") as vhost:
        assert await regressions.cut_during_setup(vhost) is None
