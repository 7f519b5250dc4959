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


@pytest.mark.parametrize("fields, field", [
    (dict(kind="step"), "kind"),
    (dict(kind="linear", warmup_updates=-1), "warmup_updates"),
    (dict(kind="linear", start_update=-2), "start_update"),
    (dict(kind="constant", warmup_updates=5), "warmup_updates"),
    (dict(kind="exp", exp_ratio=0.0), "exp_ratio"),
    (dict(kind="exp", exp_ratio=float("inf")), "exp_ratio"),
])
def test_schedule_rejects_bad_settings_naming_the_field(fields, field):
    """The library names its own keyword; the task translates it into the flag."""
    with pytest.raises(OptionError, match=f"^{field} must be") as caught:
        BonusSchedule(**fields)
    assert caught.value.field == field
