"""The bonus-weight schedule: how much of rho is applied at a given update. Plain Python.

The paper's code (lancopku/well-classified-examples-are-underestimated, fairseq criterion
``encourage_loss``) warms the bonus in over *epochs* with t/T = epoch / max_epoch and
``linear`` t/T, ``exp`` exp(r (t/T - 1)) with ratio r = 5, ``cos`` (1 - cos(pi t/T)) / 2, and
defers the bonus by whole epochs for graph classification. Here the same curves are functions of
the update number, which is what fairseq checkpoints and resumes exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .options import check_option, is_finite_number

SCHEDULES = ("constant", "linear", "exp", "cosine")


@dataclass(frozen=True)
class BonusSchedule:
    """The factor s(n) in [0, 1] that multiplies rho on update ``n``; a bad field raises
    ``options.OptionError`` naming it.

    ``n`` counts updates from 1, as fairseq logs them (``num_updates`` after the update). With
    K = ``start_update`` and N = ``warmup_updates``:

    * s(n) = 0 for n <= K: the first K updates carry no bonus at all;
    * x = min(1, (n - K) / N) for n > K (x = 1 when N = 0), and then
      - ``constant``: s = 1 (only the start applies; N must be 0),
      - ``linear``:   s = x,
      - ``exp``:      s = exp(-r (1 - x)) with r = ``exp_ratio`` (the paper's 5): it rises
        exponentially from exp(-r) (0.0067 for r = 5) just after K to exactly 1 at update K + N;
        like the paper, it does not start at 0 but close to it,
      - ``cosine``:   s = (1 - cos(pi x)) / 2,
    * so s(n) = 1 from update K + N on, for every schedule.
    """

    kind: str = "constant"
    warmup_updates: int = 0
    start_update: int = 0
    exp_ratio: float = 5.0

    def __post_init__(self):
        check_option(self.kind in SCHEDULES, "kind", f"one of {', '.join(SCHEDULES)}", self.kind)
        for field in ("warmup_updates", "start_update"):
            value = getattr(self, field)
            check_option(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                         field, "an integer >= 0", value)
        check_option(self.kind != "constant" or self.warmup_updates == 0, "warmup_updates",
                     "0 unless a warm-up schedule (linear, exp or cosine) is chosen", self.warmup_updates)
        check_option(is_finite_number(self.exp_ratio) and self.exp_ratio > 0, "exp_ratio",
                     "a finite number > 0", self.exp_ratio)

    @property
    def is_trivial(self) -> bool:
        """True when s(n) = 1 for every update: the bonus runs at constant rho."""
        return self.kind == "constant" and self.start_update == 0

    def __call__(self, num_updates: int) -> float:
        if num_updates <= self.start_update:
            return 0.0
        if self.warmup_updates == 0:
            return 1.0
        x = min(1.0, (num_updates - self.start_update) / self.warmup_updates)
        if self.kind == "linear":
            return x
        if self.kind == "exp":
            return math.exp(-self.exp_ratio * (1.0 - x))
        if self.kind == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * x))
        return 1.0
