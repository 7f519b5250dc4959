"""fairseq adapter for the encouraging loss: the ``encouraging_ls`` criterion."""

import math
from dataclasses import dataclass, field
from typing import Optional

from fairseq import utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics

from encouraging_loss import EncouragingLossOptions, encouraging_loss
from encouraging_loss.functional import IMPLS
from encouraging_loss.options import BONUSES


@dataclass
class EncouragingLabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    bonus_rho: float = field(default=1.0, metadata={"help": "weight rho of the bonus; 0 gives label_smoothed_cross_entropy"})
    log_end: float = field(default=0.5, metadata={
        "help": "LE of the conservative log bonus: log(1-p) up to p=LE, its tangent beyond; 1.0 is the plain bonus"})
    el_label_smoothing: Optional[float] = field(default=None, metadata={
        "help": "smoothing eps_b of the bonus term (default: the same as --label-smoothing)"})
    bonus: ChoiceEnum(BONUSES) = field(default="log", metadata={
        "help": "bonus b(p): log = log(1-p) (conservative with --log-end), power = -p^gamma, cosine = cos(pi p)-1"})
    bonus_gamma: float = field(default=1.0, metadata={"help": "exponent of the power bonus"})
    bonus_start: float = field(default=0.0, metadata={
        "help": "bonus only where p >= this, shifted to be continuous (0 below)"})
    el_impl: ChoiceEnum(IMPLS) = field(default="auto", metadata={
        "help": "fused: one streaming pass over the logits (Triton on CUDA, chunked PyTorch on CPU); "
                "reference: the straightforward autograd version; auto: fused"})
    el_keep_logits: bool = field(default=False, metadata={
        "help": "fused path: store the gradient beside the decoder's logits instead of in their memory "
                "(costs one logits-sized tensor); for models whose own graph still needs the logits, "
                "which otherwise fail in backward with 'modified by an inplace operation'"})


@register_criterion("encouraging_ls", dataclass=EncouragingLabelSmoothedCrossEntropyConfig)
class EncouragingLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """fairseq's label-smoothed cross-entropy plus rho * the encouraging bonus.

    ``bonus_scale`` multiplies rho; the ``translation_encouraging`` task sets it each update from
    its bonus schedule. With other tasks it stays 1.
    """

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 bonus_rho=1.0, log_end=0.5, el_label_smoothing=None, bonus="log", bonus_gamma=1.0,
                 bonus_start=0.0, el_impl="auto", el_keep_logits=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self.options = EncouragingLossOptions(
            label_smoothing=label_smoothing, bonus_rho=bonus_rho, log_end=log_end,
            el_label_smoothing=el_label_smoothing, bonus=str(bonus), bonus_gamma=bonus_gamma,
            bonus_start=bonus_start)
        if str(el_impl) not in IMPLS:
            raise ValueError(f"--el-impl must be one of {', '.join(IMPLS)}, got {el_impl!r}")
        self.impl = str(el_impl)
        self.keep_logits = bool(el_keep_logits)
        self.bonus_scale = 1.0
        self.with_stats = True

    @property
    def bonus_weight(self) -> float:
        return self.options.bonus_rho * self.bonus_scale

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        out = self.compute_encouraging_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": out.loss.data,
            "nll_loss": out.nll_loss.data,
            "ce_loss": out.ce_loss.data,
            "bonus": out.bonus.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        # on every step, diagnostics or not (the task may skip them): the schedule must stay visible;
        # summable across workers: divided by el_weight_tokens when reduced
        logging_output["el_bonus_weight"] = sample["ntokens"] * self.bonus_weight
        logging_output["el_weight_tokens"] = sample["ntokens"]
        if out.stats is not None:
            logging_output.update({f"el_{name}": value.data for name, value in out.stats.items()})
            if self.report_accuracy:
                logging_output["n_correct"] = utils.item(out.stats["correct"].data)
                logging_output["total"] = utils.item(out.stats["tokens"].data)
        return out.loss, sample_size, logging_output

    def compute_encouraging_loss(self, model, net_output, sample, reduce=True):
        target = model.get_targets(sample, net_output)
        if getattr(model.decoder, "adaptive_softmax", None) is None:
            logits = net_output[0]  # raw decoder logits: no float32 log-softmax copy
            overwrite_logits = not self.keep_logits  # nothing reads them after the loss (accuracy comes from stats)
        else:
            logits = model.get_normalized_probs(net_output, log_probs=True)
            overwrite_logits = False  # log_softmax saved its output for backward
        if self.ignore_prefix_size > 0:
            logits = logits[:, self.ignore_prefix_size:, :]
            target = target[:, self.ignore_prefix_size:]
        options = self.options if self.bonus_scale == 1.0 else self.options.with_rho(self.bonus_weight)
        return encouraging_loss(logits, target, options, ignore_index=self.padding_idx,
                                reduction="sum" if reduce else "none", impl=self.impl,
                                with_stats=self.with_stats or self.report_accuracy,
                                overwrite_logits=overwrite_logits)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key):
            return utils.item(sum(log.get(key, 0) for log in logging_outputs))

        sample_size = total("sample_size")
        if sample_size > 0:
            # in the units of ``loss``: loss = ce_loss + bonus_weight * bonus
            metrics.log_scalar("ce_loss", total("ce_loss") / sample_size / math.log(2), sample_size, round=3)
            metrics.log_scalar("bonus", total("bonus") / sample_size / math.log(2), sample_size, round=3)
        tokens = total("el_tokens")
        if tokens > 0:
            metrics.log_scalar("p_target", total("el_target_prob") / tokens, tokens, round=4)
            metrics.log_scalar("p_gt_half", total("el_target_prob_above_half") / tokens, tokens, round=4)
            metrics.log_scalar("p_gt_le", total("el_target_prob_above_log_end") / tokens, tokens, round=4)
            metrics.log_scalar("margin", total("el_margin") / tokens, tokens, round=3)
        weight_tokens = total("el_weight_tokens")
        if weight_tokens > 0:
            metrics.log_scalar("bonus_weight", total("el_bonus_weight") / weight_tokens, weight_tokens, round=4)

