"""The encouraging loss for ``transformers.Trainer`` and ``Seq2SeqTrainer``.

    loss_func = EncouragingLossFunc(label_smoothing=0.1, log_end=0.5, bonus_rho=1.0,
                                    schedule=BonusSchedule("linear", warmup_updates=500))
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=..., data_collator=...)
    loss_func.attach(trainer)      # compute_loss_func, the schedule's callback, the logged diagnostics
    trainer.train()

What the Trainer does with a ``compute_loss_func`` (checked against transformers 5.25) and how this
module meets it:

* It pops ``labels`` before the forward pass and calls ``loss_func(outputs, labels,
  num_items_in_batch)``, where ``num_items_in_batch`` counts the labels != -100 of the whole
  accumulated batch (over every process under DDP). The loss here is the token *sum* over this
  micro-batch divided by that count, and the Trainer no longer divides by the accumulation steps, so
  gradient accumulation gives the update of one large batch. The count may come as an int, a tensor
  on another device or of float dtype, or ``None`` (then this micro-batch's own count is used, which
  is only right without accumulation).
* Under DDP (``average_tokens_across_devices``, the default) the Trainer multiplies the loss by the
  number of processes, which DDP's gradient averaging undoes: nothing to do here.
* ``label_smoothing_factor`` is ignored once ``compute_loss_func`` is set (and HF's own smoothing puts
  eps/V on every class, where fairseq and this loss put eps/(V-1) on the others): ``attach`` refuses
  it; put the smoothing into the options instead.
* ``Seq2SeqTrainer`` with ``predict_with_generate`` and a ``compute_metrics`` computes ``eval_loss``
  with the model's own cross-entropy, not with this function: ``attach`` says so. Otherwise
  ``eval_loss`` is this loss (at the bonus weight of the last update).
* The Trainer has no API for extra logged values, and a callback's ``on_log`` only reaches the
  reporting integrations (TensorBoard, wandb) that run after it: ``attach`` puts the callback first.
* The function receives the logits. With ``fuse_projection=True`` the logits of training batches are
  never formed: ``attach`` also overrides the Trainer's ``compute_loss`` for training steps, which
  runs the model's backbone (``model.base_model``) for the last hidden states and gives them with
  the output layer's weight and bias (plus a ``final_logits_bias``, as Marian and BART have) to
  ``linear_encouraging_loss``. Before the first such step it checks, once per model, in eval mode
  on that batch, that this reproduces the model's own logits, and refuses in one line if not (a
  model that rescales its hidden states or logits). Evaluation keeps the logits (predictions need
  them). Single process only: a wrapped model (DDP) is refused.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Dict, Optional

import torch

from ..functional import check_call_options, encouraging_loss
from ..linear import linear_encouraging_loss
from ..options import EncouragingLossOptions
from ..schedule import BonusSchedule
from ..stats import STAT_NAMES

# logged name -> (numerator, denominator) among the accumulated sums; names follow the fairseq criterion
LOGGED = {
    "el_p_target": ("target_prob", "tokens"),
    "el_p_gt_half": ("target_prob_above_half", "tokens"),
    "el_p_gt_le": ("target_prob_above_log_end", "tokens"),
    "el_margin": ("margin", "tokens"),
    "el_bonus_weight": ("bonus_weight", "weight_tokens"),
    "el_nll_loss": ("nll_loss", "weight_tokens"),
    "el_ce_loss": ("ce_loss", "weight_tokens"),
    "el_bonus": ("bonus", "weight_tokens"),
}


class EncouragingLossFunc:
    """A ``compute_loss_func`` for ``transformers.Trainer``: the encouraging loss of the model's
    logits against ``labels`` (-100 ignored), summed and divided by ``num_items_in_batch``.

    ``options`` (an ``EncouragingLossOptions``, or its fields by keyword) as in ``encouraging_loss``;
    ``schedule``: a ``BonusSchedule`` over optimizer steps (the fairseq task's, counted the same way:
    update n = 1, 2, ...), applied by ``callback``; ``shift_labels``: the causal-LM shift (logits at
    position i predict label i + 1), for decoder-only models; encoder-decoder models (Marian, T5,
    mBART) need none. ``overwrite_logits``: in training, let the fused path keep the gradient in the
    logits' memory (safe in the Trainer: nothing reads the training logits after the loss).
    ``fuse_projection``: training steps never form the logits (see the module's notes; ``attach``
    installs it).
    """

    def __init__(self, options: Optional[EncouragingLossOptions] = None, *, schedule: Optional[BonusSchedule] = None,
                 shift_labels: bool = False, ignore_index: int = -100, impl: str = "auto",
                 overwrite_logits: bool = True, with_stats: bool = True, fuse_projection: bool = False,
                 **option_fields):
        if options is None:
            options = EncouragingLossOptions(**option_fields)
        elif option_fields:
            raise TypeError("pass either options or option fields, not both")
        check_call_options("sum", impl)
        if schedule is not None and not isinstance(schedule, BonusSchedule):
            raise TypeError(f"schedule must be an encouraging_loss.schedule.BonusSchedule, got {type(schedule).__name__}")
        self.options, self.schedule = options, schedule or BonusSchedule()
        self.shift_labels, self.ignore_index, self.impl = bool(shift_labels), ignore_index, impl
        self.overwrite_logits, self.with_stats = bool(overwrite_logits), bool(with_stats)
        self.fuse_projection = bool(fuse_projection)
        self._checked_models = set()  # ids of models whose logits the fused projection reproduces
        self.num_updates: Optional[int] = None  # the update being computed; set by the callback
        self._callback = None
        self._sums: Dict[str, torch.Tensor] = {}

    @property
    def callback(self):
        """The ``TrainerCallback`` that runs the schedule and logs the diagnostics (``attach`` adds it)."""
        if self._callback is None:
            self._callback = _callback_class()(self)
        return self._callback

    # -- the schedule ---------------------------------------------------------------------------
    def set_update(self, num_updates: int) -> None:
        """The optimizer step the next losses belong to, counted from 1 (the callback calls this)."""
        self.num_updates = int(num_updates)

    @property
    def bonus_weight(self) -> float:
        """rho x the schedule at the current update (the complete schedule before any update)."""
        if self.schedule.is_trivial:
            return self.options.bonus_rho
        return self.options.bonus_rho * (1.0 if self.num_updates is None else self.schedule(self.num_updates))

    # -- the loss -------------------------------------------------------------------------------
    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        logits, labels = self.logits_and_labels(outputs, labels)
        return self.loss_from_logits(logits, labels, num_items_in_batch)

    def logits_and_labels(self, outputs, labels):
        """The logits (..., V) and labels (...) the loss compares, shifted when ``shift_labels``."""
        if labels is None:
            raise ValueError("EncouragingLossFunc needs labels: the batches have no 'labels' field "
                             "(a seq2seq collator such as DataCollatorForSeq2Seq adds it)")
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if self.shift_labels:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return logits, labels.to(logits.device)

    def loss_from_logits(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        training = torch.is_grad_enabled() and logits.requires_grad
        options, weight = self._options_now(training)
        out = encouraging_loss(logits, labels, options, ignore_index=self.ignore_index, reduction="sum",
                               impl=self.impl, with_stats=self.with_stats and training,
                               overwrite_logits=self.overwrite_logits and training)
        if training:
            self._accumulate(out, weight)
        return out.loss / self.normaliser(num_items_in_batch, labels, out.loss)

    def loss_from_hidden(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """The training loss of a batch without its logits: the backbone's last hidden states through
        ``linear_encouraging_loss`` with the model's output layer (``fuse_projection``)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("EncouragingLossFunc needs labels: the batches have no 'labels' field")
        weight, bias = _output_layer(model)
        if model.config.is_encoder_decoder and "decoder_input_ids" not in inputs:
            inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
        if id(model) not in self._checked_models:
            _check_projection(model, inputs, weight, bias)
            self._checked_models.add(id(model))
        hidden = model.base_model(**inputs)[0]
        labels = labels.to(hidden.device)
        if self.shift_labels:
            hidden, labels = hidden[..., :-1, :], labels[..., 1:]
        options, bonus_weight = self._options_now(training=True)
        out = linear_encouraging_loss(hidden, weight, labels, options, bias=bias, ignore_index=self.ignore_index,
                                      reduction="sum", with_stats=self.with_stats)
        self._accumulate(out, bonus_weight)
        return out.loss / self.normaliser(num_items_in_batch, labels, out.loss)

    def _options_now(self, training: bool):
        """(options at the current bonus weight, that weight)."""
        if training and self.num_updates is None and not self.schedule.is_trivial:
            raise RuntimeError("EncouragingLossFunc has a bonus schedule but no step count: call "
                               "loss_func.attach(trainer) (or add loss_func.callback to the Trainer's callbacks)")
        weight = self.bonus_weight
        return (self.options if weight == self.options.bonus_rho else self.options.with_rho(weight)), weight

    def normaliser(self, num_items_in_batch, labels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The divisor of the token sum: the Trainer's count of the accumulated batch (any device or
        dtype; one value per GPU under DataParallel, all equal), else this micro-batch's own count."""
        if num_items_in_batch is None:
            count = labels.ne(self.ignore_index).sum()
        elif torch.is_tensor(num_items_in_batch):
            count = num_items_in_batch.detach().reshape(-1)[0]
        else:
            count = torch.tensor(num_items_in_batch)
        return count.to(device=like.device, dtype=like.dtype).clamp_min(1)

    # -- the diagnostics ------------------------------------------------------------------------
    def _accumulate(self, out, weight: float) -> None:
        """Adds this micro-batch's sums (kept on the device: no synchronisation until logged)."""
        if out.stats is None:
            return
        tokens = out.stats["tokens"]
        parts = {name: out.stats[name] for name in STAT_NAMES}
        parts.update(nll_loss=out.nll_loss, ce_loss=out.ce_loss, bonus=out.bonus, weight_tokens=tokens,
                     bonus_weight=tokens * weight)
        for name, value in parts.items():
            value = value.detach().float()
            self._sums[name] = self._sums[name] + value if name in self._sums else value

    def pop_logged(self) -> Dict[str, float]:
        """The diagnostics averaged over the tokens since the last call (all processes under DDP),
        then reset: p_target, the shares above 1/2 and above LE, the margin, the bonus weight, and
        the per-token nll, label-smoothed CE and bonus (nats)."""
        sums, self._sums = self._sums, {}
        if not sums:
            return {}
        names = sorted(sums)
        values = torch.stack([sums[name] for name in names])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
        totals = dict(zip(names, values.tolist()))
        return {key: totals[num] / totals[den] for key, (num, den) in LOGGED.items() if totals.get(den, 0) > 0}

    # -- the Trainer ----------------------------------------------------------------------------
    def attach(self, trainer) -> "EncouragingLossFunc":
        """Makes this the Trainer's loss: ``compute_loss_func``, the schedule's callback first among
        the callbacks (so the diagnostics reach ``report_to``), and the checks of settings that would
        silently do something else. Returns self."""
        args = trainer.args
        if getattr(args, "label_smoothing_factor", 0):
            raise ValueError(f"label_smoothing_factor={args.label_smoothing_factor} is ignored by the Trainer once "
                             "compute_loss_func is set: give the smoothing to EncouragingLossFunc (label_smoothing=...; "
                             "fairseq's convention, eps/(V-1) on the other classes) and set label_smoothing_factor=0")
        causal = getattr(trainer, "_loss_shifts_labels", None)
        if causal is not None and causal != self.shift_labels:
            warnings.warn(f"the Trainer counts num_items_in_batch {'with' if causal else 'without'} the causal-LM "
                          f"shift but EncouragingLossFunc(shift_labels={self.shift_labels}): pass "
                          f"shift_labels={causal}", stacklevel=2)
        if getattr(args, "predict_with_generate", False):
            warnings.warn("Seq2SeqTrainer with predict_with_generate computes eval_loss with the model's own "
                          "cross-entropy, not the encouraging loss, whenever it has compute_metrics", stacklevel=2)
        trainer.compute_loss_func = self
        if self.fuse_projection:
            trainer.compute_loss = functools.partial(_fused_compute_loss, self, trainer, trainer.compute_loss)
        callbacks = trainer.callback_handler.callbacks
        if self.callback in callbacks:
            callbacks.remove(self.callback)
        callbacks.insert(0, self.callback)
        return self


class FusedProjectionError(ValueError):
    """The model's logits are not its output layer applied to its backbone's last hidden states."""


def _fused_compute_loss(loss_func, trainer, unfused, model, inputs, return_outputs=False, num_items_in_batch=None):
    """Trainer.compute_loss with the fused projection for training steps; evaluation (which needs the
    logits for predictions) takes the Trainer's own path."""
    if return_outputs or not model.training:
        return unfused(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
    if model is not trainer.accelerator.unwrap_model(model):
        raise FusedProjectionError("fuse_projection runs on an unwrapped model only (one process, no "
                                   f"DataParallel/DDP); the Trainer wrapped it in {type(model).__name__}")
    return loss_func.loss_from_hidden(model, inputs, num_items_in_batch)


def _output_layer(model):
    """(weight, bias) such that logits = hidden @ weight.T + bias; bias includes a final_logits_bias."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or model.base_model is model:
        raise FusedProjectionError(f"{type(model).__name__} has no linear output layer beside a backbone "
                                   f"(get_output_embeddings() gives {type(head).__name__}): use fuse_projection=False")
    bias = head.bias
    extra = getattr(model, "final_logits_bias", None)
    if torch.is_tensor(extra):
        bias = extra.reshape(-1) if bias is None else bias + extra.reshape(-1)
    return head.weight, bias


def _check_projection(model, inputs, weight, bias):
    """Refuses a model whose logits the fused projection would not reproduce (checked in eval mode,
    where both forward passes are deterministic, on this batch)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(**inputs).logits.float()
            projected = torch.nn.functional.linear(model.base_model(**inputs)[0], weight, bias).float()
    finally:
        model.train(was_training)
    difference = (projected - logits).abs().max().item() if projected.shape == logits.shape else float("inf")
    if not difference <= 1e-4 * (1.0 + logits.abs().max().item()):
        raise FusedProjectionError(f"{type(model).__name__}'s logits are not its output layer applied to its "
                                   f"backbone's last hidden states (largest difference {difference:.3g}): "
                                   "use fuse_projection=False")


@functools.lru_cache(maxsize=None)
def _callback_class():
    from transformers import TrainerCallback  # the framework is imported where it is used, not with the package

    class EncouragingLossCallback(TrainerCallback):
        """Steers the schedule by the Trainer's optimizer step (restored from a checkpoint on resume,
        hence exact across resumes) and adds the diagnostics to the training logs."""

        def __init__(self, loss_func: EncouragingLossFunc):
            self.loss_func = loss_func

        def on_train_begin(self, args, state, control, **kwargs):
            # after a resume, evaluation before the next step uses the weight of the last update
            if state.global_step > 0:
                self.loss_func.set_update(state.global_step)

        def on_step_begin(self, args, state, control, **kwargs):
            self.loss_func.set_update(state.global_step + 1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is None or "loss" not in logs:  # training logs only; eval logs carry eval_loss
                return
            extra = self.loss_func.pop_logged()
            logs.update(extra)
            # the Trainer appended a copy of logs to log_history before calling the callbacks
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(extra)

    return EncouragingLossCallback
