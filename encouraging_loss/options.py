"""The encouraging loss's settings, validated once, shared by every implementation."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from numbers import Real
from typing import Optional

BONUSES = ("log", "power", "cosine")

# log(1 - p) is followed up to p = log_end; at log_end = 1 (the plain bonus) we still stop this
# short of 1 so that b and b' stay finite when p rounds to 1 in float32.
MAX_LOG_END = 1.0 - 2.0**-24


class OptionError(ValueError):
    """A keyword argument of the library out of its range; ``field`` is the keyword's name.

    Adapters translate ``field`` into their own spelling (fairseq: ``--log-end`` for ``log_end``).
    """

    def __init__(self, field: str, requirement: str, value):
        self.field, self.requirement, self.value = field, requirement, value
        super().__init__(f"{field} must be {requirement}, got {value!r}")


def check_option(ok: bool, field: str, requirement: str, value) -> None:
    if not ok:
        raise OptionError(field, requirement, value)


def is_finite_number(value) -> bool:
    """A real number, not a bool, not inf or nan."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class EncouragingLossOptions:
    """Settings of L = CE_ls(eps) + rho * [(1 - eps_b) b(p_y) + eps_b / V * sum_j b(p_j)].

    Every float field must be a finite number in its range; a bad one raises ``OptionError``
    naming the field.
    """

    label_smoothing: float = 0.0
    bonus_rho: float = 1.0
    el_label_smoothing: Optional[float] = None  # None: same as label_smoothing
    bonus: str = "log"
    log_end: float = 0.5
    bonus_gamma: float = 1.0
    bonus_start: float = 0.0

    def __post_init__(self):
        def check(field, requirement, in_range):
            value = getattr(self, field)
            check_option(is_finite_number(value) and in_range(value), field, requirement, value)

        check("label_smoothing", "in [0, 1)", lambda v: 0.0 <= v < 1.0)
        if self.el_label_smoothing is not None:
            check("el_label_smoothing", "in [0, 1)", lambda v: 0.0 <= v < 1.0)
        check("bonus_rho", "a finite number >= 0", lambda v: v >= 0.0)
        check_option(self.bonus in BONUSES, "bonus", f"one of {', '.join(BONUSES)}", self.bonus)
        check("log_end", "in (0, 1]", lambda v: 0.0 < v <= 1.0)
        check("bonus_gamma", "a finite number > 0", lambda v: v > 0.0)
        check("bonus_start", "in [0, 1)", lambda v: 0.0 <= v < 1.0)

    @property
    def bonus_smoothing(self) -> float:
        """eps_b, the smoothing of the bonus term."""
        return self.label_smoothing if self.el_label_smoothing is None else self.el_label_smoothing

    @property
    def clamped_log_end(self) -> float:
        """LE as the formulas use it: at most MAX_LOG_END."""
        return min(self.log_end, MAX_LOG_END)

    def with_rho(self, bonus_rho: float) -> "EncouragingLossOptions":
        return dataclasses.replace(self, bonus_rho=bonus_rho)


def smoothing_weights(label_smoothing: float, vocab_size: int):
    """(weight of the target's nll, weight of every class's -log p) in fairseq's label-smoothed CE.

    fairseq >= 0.12 spreads eps over the V - 1 other classes: (1 - eps - eps_i) nll + eps_i sum_j -log p_j
    with eps_i = eps / (V - 1), so that the smoothed target distribution sums to one.
    """
    eps_i = label_smoothing / (vocab_size - 1) if vocab_size > 1 else 0.0
    return 1.0 - label_smoothing - eps_i, eps_i


def bonus_weights(options: EncouragingLossOptions, vocab_size: int):
    """(w_y, w_j for j != y) of the bonus bracket (1 - eps_b) b(p_y) + eps_b / V sum_j b(p_j)."""
    others_weight = options.bonus_smoothing / vocab_size
    return 1.0 - options.bonus_smoothing + others_weight, others_weight
