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
from fairseq.models.transformer import TransformerDecoderBase
from torch import nn

from encouraging_loss import EncouragingLossOptions, encouraging_loss, linear_encouraging_loss
from encouraging_loss.functional import IMPLS
from encouraging_loss.options import BONUSES
from fairseq_plugins.errors import FlagError, UserInputError, flag_error


class UnfusableModelError(UserInputError, RuntimeError):
    """--el-fuse-projection on a model whose output layer it cannot take over. A RuntimeError: fairseq's
    trainer re-raises those from a training step as they are, where any other error first writes a
    crash.pt checkpoint."""


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
    el_fuse_projection: bool = field(default=False, metadata={
        "help": "run the decoder without its output projection and apply that projection inside the loss, "
                "a block of tokens at a time, so that the tokens x vocabulary logits never exist "
                "(Transformer decoders with an nn.Linear output projection, shared embeddings included)"})


@register_criterion("encouraging_ls", dataclass=EncouragingLabelSmoothedCrossEntropyConfig)
class EncouragingLabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """fairseq's label-smoothed cross-entropy plus rho * the encouraging bonus.

    ``compute_loss`` (fairseq's hook, which other code calls) returns the same loss and nll as
    ``forward``. ``set_step`` is how a task steers a step: the ``translation_encouraging`` task
    passes the fraction of rho its schedule gives and whether to compute the diagnostics; with
    other tasks rho applies in full and the diagnostics run on every step.
    """

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 bonus_rho=1.0, log_end=0.5, el_label_smoothing=None, bonus="log", bonus_gamma=1.0,
                 bonus_start=0.0, el_impl="auto", el_keep_logits=False, el_fuse_projection=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        try:
            self.options = EncouragingLossOptions(
                label_smoothing=label_smoothing, bonus_rho=bonus_rho, log_end=log_end,
                el_label_smoothing=el_label_smoothing, bonus=str(bonus), bonus_gamma=bonus_gamma,
                bonus_start=bonus_start)
        except ValueError as error:
            raise flag_error(error) from None
        self.impl = str(el_impl)  # ChoiceEnum: fairseq's parser already refused anything else
        self.keep_logits = bool(el_keep_logits)
        self.fuse_projection = bool(el_fuse_projection)
        if self.fuse_projection and self.impl == "reference":
            raise FlagError("--el-fuse-projection needs the fused loss: drop --el-impl reference")
        self.bonus_scale = 1.0
        self.with_stats = True

    def set_step(self, bonus_scale: float = 1.0, with_stats: bool = True) -> None:
        """Steers the next steps: rho x ``bonus_scale`` (a schedule's value in [0, 1]) and whether
        to compute the diagnostics (p_target, margin, ...; --report-accuracy needs them anyway)."""
        self.bonus_scale = float(bonus_scale)
        self.with_stats = bool(with_stats)

    @property
    def bonus_weight(self) -> float:
        return self.options.bonus_rho * self.bonus_scale

    def forward(self, model, sample, reduce=True):
        with_stats = self.with_stats or self.report_accuracy
        if self.fuse_projection:
            projection = self.output_projection(model)
            features = model(**sample["net_input"], features_only=True)
            out = self.compute_projected_loss(model, projection, features, sample, reduce, with_stats)
        else:
            net_output = model(**sample["net_input"])
            # nothing reads the decoder's logits after the loss here (accuracy comes from the stats), so
            # the fused path may store the gradient in their memory
            out = self.compute_encouraging_loss(model, net_output, sample, reduce=reduce,
                                                overwrite_logits=not self.keep_logits, with_stats=with_stats)
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

    def compute_loss(self, model, net_output, sample, reduce=True):
        """fairseq's hook: (loss, nll_loss) of this criterion, as ``forward`` computes them. The
        caller may still read ``net_output`` afterwards, so the logits are left as they are."""
        out = self.compute_encouraging_loss(model, net_output, sample, reduce=reduce)
        return out.loss, out.nll_loss

    def compute_accuracy(self, model, net_output, sample):
        logits, target = self.logits_and_target(model, net_output, sample)
        scored = target.ne(self.padding_idx)
        n_correct = logits.argmax(-1).masked_select(scored).eq(target.masked_select(scored)).sum()
        return n_correct, scored.sum()

    def get_lprobs_and_target(self, model, net_output, sample):
        """fairseq's hook: flat log-probabilities and target, the prefix removed as the loss removes it."""
        lprobs, target = self._without_prefix(model.get_normalized_probs(net_output, log_probs=True),
                                              model.get_targets(sample, net_output))
        return lprobs.reshape(-1, lprobs.size(-1)), target.reshape(-1)

    def logits_and_target(self, model, net_output, sample):
        """The scores the loss reads (the decoder's raw logits, or its log-probabilities with an
        adaptive softmax) and the target, both without the first ``--ignore-prefix-size`` positions."""
        if self._are_raw_logits(model):
            scores = net_output[0]  # no float32 log-softmax copy: the loss normalises as it goes
        else:
            scores = model.get_normalized_probs(net_output, log_probs=True)
        return self._without_prefix(scores, model.get_targets(sample, net_output))

    def _without_prefix(self, scores, target):
        if self.ignore_prefix_size > 0:
            return scores[:, self.ignore_prefix_size:, :], target[:, self.ignore_prefix_size:]
        return scores, target

    @staticmethod
    def _are_raw_logits(model):
        return getattr(model.decoder, "adaptive_softmax", None) is None

    def compute_encouraging_loss(self, model, net_output, sample, reduce=True, overwrite_logits=False,
                                 with_stats=False):
        """The encouraging loss of ``net_output`` (an ``EncouragingLossOutput``: loss, nll_loss,
        ce_loss, bonus and, ``with_stats``, the diagnostics), at rho x the current bonus scale.
        ``overwrite_logits``: the fused path may keep the gradient in the logits' memory (raw
        logits only: log_softmax saved its output for backward)."""
        logits, target = self.logits_and_target(model, net_output, sample)
        options = self.options if self.bonus_scale == 1.0 else self.options.with_rho(self.bonus_weight)
        return encouraging_loss(logits, target, options, ignore_index=self.padding_idx,
                                reduction="sum" if reduce else "none", impl=self.impl, with_stats=with_stats,
                                overwrite_logits=overwrite_logits and self._are_raw_logits(model))

    @staticmethod
    def output_projection(model) -> nn.Linear:
        """The decoder's output projection, when its logits are exactly that layer applied to the
        features the decoder returns with ``features_only=True``; an UnfusableModelError saying why otherwise."""
        decoder = getattr(model, "decoder", None)
        name = type(model).__name__

        def refuse(reason):
            return UnfusableModelError(f"--el-fuse-projection cannot fuse the output layer of {name}: {reason}")

        if getattr(decoder, "adaptive_softmax", None) is not None:
            raise refuse("it uses an adaptive softmax")
        projection = getattr(decoder, "output_projection", None)
        if not isinstance(projection, nn.Linear):
            raise refuse("its decoder has no nn.Linear output_projection")
        own_layer = type(decoder).output_layer is not TransformerDecoderBase.output_layer
        if not isinstance(decoder, TransformerDecoderBase) or own_layer:
            raise refuse("its decoder's output layer is not fairseq's Transformer output projection")
        return projection

    def compute_projected_loss(self, model, projection: nn.Linear, features, sample, reduce=True, with_stats=False):
        """The encouraging loss of ``projection`` applied to the decoder's ``features`` (its output
        with ``features_only=True``), the logits formed a block of tokens at a time inside the loss."""
        hidden, target = self._without_prefix(features[0], model.get_targets(sample, features))
        options = self.options if self.bonus_scale == 1.0 else self.options.with_rho(self.bonus_weight)
        return linear_encouraging_loss(hidden, projection.weight, target, options, bias=projection.bias,
                                       ignore_index=self.padding_idx, reduction="sum" if reduce else "none",
                                       with_stats=with_stats)

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

