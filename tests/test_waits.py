"""The suite's own waits: a check that something does not happen fails at the first sign of it."""

from __future__ import annotations

import pytest

from tests.conftest import never_happens, stays_true


def test_stays_true_fails_at_the_first_false_not_when_its_time_is_up():
    answers = [True, True, False]
    asked: list[bool] = []

    def predicate() -> bool:
        asked.append(answers[len(asked)])
        return asked[-1]

    with pytest.raises(AssertionError, match="the flag stopped holding"):
        stays_true(predicate, 600, "the flag")

    assert asked == answers  # asked again and again, and not once more after the first False


def test_never_happens_passes_when_nothing_happens_and_fails_when_something_does():
    never_happens(lambda: False, 0.2, "anything")

    with pytest.raises(AssertionError, match="a second done happened"):
        never_happens(lambda: True, 600, "a second done")
