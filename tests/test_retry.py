"""Broker retries: the settled-index header survives the trip, and the right delay queue is chosen."""

from __future__ import annotations

from service.retry import decode_done, delay_queue_for, encode_done
from tests.support import settings


def test_done_header_round_trip() -> None:
    """The settled-index bitmap survives encoding; a header for another body is ignored."""
    done = frozenset({0, 3, 999})
    header = encode_done(done, 1000)
    assert decode_done(header, 1000) == done
    assert decode_done(header.encode(), 1000) == done
    assert decode_done(header, 999) == frozenset()
    assert decode_done("junk", 5) == frozenset()
    assert decode_done(None, 5) == frozenset()


def test_delay_queue_choice() -> None:
    """The shortest delay queue that waits long enough, else the longest, saying it is too short."""
    s = settings(retry_delays="5,1,30,5")
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 0.5) == (s.delay_queue_name(1), True)
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 5) == (s.delay_queue_name(5), True)
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 6) == (s.delay_queue_name(30), True)
    assert delay_queue_for(s.retry_delays, s.delay_queue_name, 999) == (s.delay_queue_name(30), False)
