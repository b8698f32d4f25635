"""The job state machine converges whatever order an attempt's events arrive in."""

from __future__ import annotations

import itertools

import pytest
from visionmesh.gateway.core import states

_ORDER = {
    states.PENDING: 0,
    states.QUEUED: 1,
    states.RUNNING: 2,
    states.CANCELLING: 3,
    states.SUCCEEDED: 4,
    states.FAILED: 4,
    states.CANCELLED: 4,
}


def _apply(current: int, events: tuple[int, ...]) -> int:
    for new in events:
        if states.can_transition(current, new):
            current = new
    return current


@pytest.mark.parametrize("outcome", sorted(states.TERMINAL))
@pytest.mark.parametrize("start", [states.PENDING, states.QUEUED])
def test_any_order_of_an_attempts_events_ends_in_its_outcome(start: int, outcome: int) -> None:
    # The relay's QUEUED, the worker's RUNNING (twice: redelivered) and its outcome.
    for order in itertools.permutations((states.QUEUED, states.RUNNING, states.RUNNING, outcome)):
        assert _apply(start, order) == outcome, [states.name(s) for s in order]


def test_an_outcome_is_accepted_from_every_live_state_and_is_final() -> None:
    live = [states.PENDING, states.QUEUED, states.RUNNING, states.CANCELLING]
    for current, outcome in itertools.product(live, states.TERMINAL):
        assert states.can_transition(current, outcome)
    for current, new in itertools.product(states.TERMINAL, _ORDER):
        assert not states.can_transition(current, new)


def test_nothing_goes_backwards() -> None:
    for current, new in itertools.product(_ORDER, _ORDER):
        if states.can_transition(current, new):
            assert _ORDER[new] >= _ORDER[current], (states.name(current), states.name(new))
