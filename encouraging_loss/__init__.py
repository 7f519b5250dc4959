"""The encouraging loss (Zhao et al., AAAI 2022) in plain PyTorch; fairseq is not needed here."""
from .functional import EncouragingLossOutput, encouraging_loss
from .linear import linear_encouraging_loss
from .module import EncouragingLoss
from .options import EncouragingLossOptions, OptionError

__all__ = ["EncouragingLoss", "EncouragingLossOptions", "EncouragingLossOutput", "OptionError", "encouraging_loss",
           "linear_encouraging_loss"]
