"""The encouraging loss's settings, validated once, shared by every implementation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

BONUSES = ("log", "power", "cosine")

# log(1 - p) is followed up to p = log_end; at log_end = 1 (the plain bonus) we still stop this
# short of 1 so that b and b' stay finite when p rounds to 1 in float32.
MAX_LOG_END = 1.0 - 2.0**-24


@dataclass(frozen=True)
class EncouragingLossOptions:
    """Settings of L = CE_ls(eps) + rho * [(1 - eps_b) b(p_y) + eps_b / V * sum_j b(p_j)].

    Each field's error message names the fairseq flag that sets it.
    """

    label_smoothing: float = 0.0
    bonus_rho: float = 1.0
    el_label_smoothing: Optional[float] = None  # None: same as label_smoothing
    bonus: str = "log"
    log_end: float = 0.5
    bonus_gamma: float = 1.0
    bonus_start: float = 0.0

    def __post_init__(self):
        def check(ok, flag, requirement, value):
            if not ok:
                raise ValueError(f"--{flag} must be {requirement}, got {value!r}")

        check(0.0 <= self.label_smoothing < 1.0, "label-smoothing", "in [0, 1)", self.label_smoothing)
        if self.el_label_smoothing is not None:
            check(0.0 <= self.el_label_smoothing < 1.0, "el-label-smoothing", "in [0, 1)",
                  self.el_label_smoothing)
        check(self.bonus_rho >= 0.0, "bonus-rho", ">= 0", self.bonus_rho)
        check(self.bonus in BONUSES, "bonus", f"one of {', '.join(BONUSES)}", self.bonus)
        check(0.0 < self.log_end <= 1.0, "log-end", "in (0, 1]", self.log_end)
        check(self.bonus_gamma > 0.0, "bonus-gamma", "> 0", self.bonus_gamma)
        check(0.0 <= self.bonus_start < 1.0, "bonus-start", "in [0, 1)", self.bonus_start)

    @property
    def bonus_smoothing(self) -> float:
        """eps_b, the smoothing of the bonus term."""
        return self.label_smoothing if self.el_label_smoothing is None else self.el_label_smoothing

    def with_rho(self, bonus_rho: float) -> "EncouragingLossOptions":
        return dataclasses.replace(self, bonus_rho=bonus_rho)


def smoothing_weights(label_smoothing: float, vocab_size: int):
    """(weight of the target's nll, weight of every class's -log p) in fairseq's label-smoothed CE.

    fairseq >= 0.12 spreads eps over the V - 1 other classes: (1 - eps - eps_i) nll + eps_i sum_j -log p_j
    with eps_i = eps / (V - 1), so that the smoothed target distribution sums to one.
    """
    eps_i = label_smoothing / (vocab_size - 1) if vocab_size > 1 else 0.0
    return 1.0 - label_smoothing - eps_i, eps_i
