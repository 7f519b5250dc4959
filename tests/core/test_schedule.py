"""The bonus-weight schedule: a pure function of the update number (no fairseq needed)."""
import math

import pytest

from encouraging_loss import OptionError
from encouraging_loss.schedule import BonusSchedule


@pytest.mark.parametrize("kind, expected", [
    ("linear", lambda x: x),
    ("exp", lambda x: math.exp(-5.0 * (1.0 - x))),
    ("cosine", lambda x: (1.0 - math.cos(math.pi * x)) / 2.0),
])
def test_schedule_values_match_closed_forms(kind, expected):
    start, warmup = 7, 20
    schedule = BonusSchedule(kind, warmup_updates=warmup, start_update=start)
    for n in (0, 1, 7):
        assert schedule(n) == 0.0, f"update {n} is not after --bonus-start-update {start}"
    for n in (8, 12, 17, 26):
        assert schedule(n) == pytest.approx(expected((n - start) / warmup), abs=1e-12)
    for n in (27, 28, 1000):
        assert schedule(n) == 1.0
    assert schedule(17) == pytest.approx({"linear": 0.5, "exp": math.exp(-2.5), "cosine": 0.5}[kind])


def test_schedule_exp_ratio_and_degenerate_cases():
    assert BonusSchedule("exp", 10, 0, exp_ratio=2.0)(5) == pytest.approx(math.exp(-1.0))
    assert BonusSchedule("exp", 10, 0)(1) == pytest.approx(math.exp(-4.5))  # starts near exp(-r), not 0
    constant = BonusSchedule("constant", 0, 3)
    assert [constant(n) for n in range(6)] == [0, 0, 0, 0, 1, 1]
    assert BonusSchedule("linear", 0, 2)(3) == 1.0  # no warm-up: full right after the start
    assert BonusSchedule().is_trivial and not BonusSchedule("constant", 0, 1).is_trivial


@pytest.mark.parametrize("fields, field, message", [
    (dict(kind="step"), "kind", "kind must be one of constant, linear, exp, cosine, got 'step'"),
    (dict(kind="linear", warmup_updates=-1), "warmup_updates", "warmup_updates must be an integer >= 0, got -1"),
    (dict(kind="linear", start_update=-2), "start_update", "start_update must be an integer >= 0, got -2"),
    (dict(kind="linear", start_update=1.5), "start_update", "start_update must be an integer >= 0, got 1.5"),
    (dict(kind="constant", warmup_updates=5), "warmup_updates",
     "warmup_updates must be 0 unless a warm-up schedule (linear, exp or cosine) is chosen, got 5"),
    (dict(kind="exp", exp_ratio=0.0), "exp_ratio", "exp_ratio must be a finite number > 0, got 0.0"),
    (dict(kind="exp", exp_ratio=float("inf")), "exp_ratio", "exp_ratio must be a finite number > 0, got inf"),
])
def test_schedule_rejects_bad_settings_naming_the_field(fields, field, message):
    """The library names its own keyword, with the range and the value given, in one line; the task
    translates the keyword into its flag."""
    with pytest.raises(OptionError) as caught:
        BonusSchedule(**fields)
    assert caught.value.field == field
    assert str(caught.value) == message
