"""The ``translation_encouraging`` task: fairseq's translation task plus the bonus-weight schedule,
sparse training diagnostics and BLEU during validation that works on SentencePiece data.

The task is a thin adapter: the schedule is ``encouraging_loss.schedule.BonusSchedule`` (plain
Python), the loss and the diagnostics are the ``encouraging_ls`` criterion's. The task only tells
the criterion, on every step (``criterion.set_step``), which fraction of rho to apply and whether to
compute the diagnostics.
"""
import logging
import os
from dataclasses import dataclass, field

from fairseq import utils
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from fairseq.tasks import FairseqTask, register_task
from fairseq.tasks.translation import EVAL_BLEU_ORDER, TranslationConfig, TranslationTask

from encouraging_loss.schedule import SCHEDULES, BonusSchedule
from fairseq_plugins.criterions.encouraging_ls import EncouragingLabelSmoothedCrossEntropyCriterion
from fairseq_plugins.errors import FlagError, UserInputError, flag_error

logger = logging.getLogger(__name__)

# BonusSchedule's keyword arguments -> the task's flags
SCHEDULE_FLAGS = {"kind": "--bonus-schedule", "warmup_updates": "--bonus-warmup-updates",
                  "start_update": "--bonus-start-update", "exp_ratio": "--bonus-exp-ratio"}


class DataDirError(UserInputError, FileNotFoundError):
    """--data, --source-lang or --target-lang do not name fairseq-preprocess output."""


@dataclass
class TranslationEncouragingConfig(TranslationConfig):
    bonus_schedule: ChoiceEnum(SCHEDULES) = field(default="constant", metadata={
        "help": "how the bonus weight rho is warmed in after --bonus-start-update: constant (full at once), "
                "linear, exp (exp(-r(1-x)), r = --bonus-exp-ratio) or cosine ((1-cos(pi x))/2), "
                "x = fraction of --bonus-warmup-updates done"})
    bonus_warmup_updates: int = field(default=0, metadata={
        "help": "updates over which the schedule takes rho from 0 to full, counted from --bonus-start-update"})
    bonus_start_update: int = field(default=0, metadata={
        "help": "the first this-many updates carry no bonus (plain label-smoothed CE)"})
    bonus_exp_ratio: float = field(default=5.0, metadata={
        "help": "steepness r of the exp schedule; it starts at exp(-r) (the paper's code: r = 5)"})
    diagnostics_interval: int = field(default=1, metadata={
        "help": "compute the training diagnostics (p_target, p_gt_half, p_gt_le, margin) only every N updates; "
                "validation always computes them"})


@register_task("translation_encouraging", dataclass=TranslationEncouragingConfig)
class TranslationEncouragingTask(TranslationTask):
    """Translation with the encouraging loss's bonus schedule; every ``translation`` option works."""

    cfg: TranslationEncouragingConfig

    def __init__(self, cfg: TranslationEncouragingConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        try:
            self.bonus_schedule = BonusSchedule(
                kind=str(cfg.bonus_schedule), warmup_updates=cfg.bonus_warmup_updates,
                start_update=cfg.bonus_start_update, exp_ratio=cfg.bonus_exp_ratio)
        except ValueError as error:
            raise flag_error(error, SCHEDULE_FLAGS) from None
        if cfg.diagnostics_interval < 1:
            raise FlagError(f"--diagnostics-interval must be >= 1, got {cfg.diagnostics_interval}")
        # fairseq's num_updates after the last training update seen; validation uses its schedule value
        self.last_num_updates = None

    @classmethod
    def setup_task(cls, cfg: TranslationEncouragingConfig, **kwargs):
        check_data_dirs(cfg.data, cfg.source_lang, cfg.target_lang)
        return super().setup_task(cfg, **kwargs)

    def build_criterion(self, cfg, from_checkpoint=False):
        criterion = super().build_criterion(cfg, from_checkpoint)
        if not isinstance(criterion, EncouragingLabelSmoothedCrossEntropyCriterion):
            name = getattr(cfg, "_name", type(criterion).__name__)
            if not self.bonus_schedule.is_trivial:
                raise FlagError(
                    f"--bonus-schedule {self.cfg.bonus_schedule} / --bonus-start-update "
                    f"{self.cfg.bonus_start_update} schedule the encouraging bonus, but --criterion {name} "
                    "has none: use --criterion encouraging_ls or drop the schedule flags")
            if self.cfg.diagnostics_interval != 1:
                raise FlagError(f"--diagnostics-interval applies to --criterion encouraging_ls only, "
                                 f"not {name}")
        else:
            logger.info(f"bonus weight: rho {criterion.options.bonus_rho} x {self.bonus_schedule}; "
                        f"diagnostics every {self.cfg.diagnostics_interval} update(s) on train, always on valid")
        return criterion

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        num_updates = update_num + 1  # fairseq passes the updates done so far; this is the next one
        if isinstance(criterion, EncouragingLabelSmoothedCrossEntropyCriterion):
            criterion.set_step(bonus_scale=self.bonus_schedule(num_updates),
                               with_stats=num_updates % self.cfg.diagnostics_interval == 0)
        self.last_num_updates = num_updates
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def valid_step(self, sample, model, criterion):
        if isinstance(criterion, EncouragingLabelSmoothedCrossEntropyCriterion):
            # before any training update (fairseq-validate) the schedule is taken as complete
            criterion.set_step(bonus_scale=1.0 if self.last_num_updates is None
                               else self.bonus_schedule(self.last_num_updates), with_stats=True)
        return super().valid_step(sample, model, criterion)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        # fairseq 0.12's batch_by_size drops the last batch when its size is not a multiple of
        # --required-batch-size-multiple (default 8; facebookresearch/fairseq#5036): validation
        # BLEU and fairseq-generate silently lose up to a whole batch of sentences. Harmless for
        # training (a remainder per epoch), so the multiple is kept there and dropped elsewhere.
        if dataset is not self.datasets.get(self.cfg.train_subset) and "required_batch_size_multiple" in kwargs:
            kwargs["required_batch_size_multiple"] = 1
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def reduce_metrics(self, logging_outputs, criterion):
        # Not TranslationTask's: it keeps the BLEU n-gram counts in meters as numpy arrays, which
        # land in every checkpoint's metrics state (extra_state/metrics) and make checkpoint_last.pt
        # and checkpoint_best.pt fail to load under torch.load(weights_only=True); its BLEU is a
        # numpy float too. Here the counts are plain-int sum meters and the BLEU a Python float.
        FairseqTask.reduce_metrics(self, logging_outputs, criterion)
        if self.cfg.eval_bleu:
            _reduce_bleu(logging_outputs)


_BLEU_SUM_KEYS = (["_bleu_sys_len", "_bleu_ref_len"] + [f"_bleu_counts_{i}" for i in range(EVAL_BLEU_ORDER)]
                  + [f"_bleu_totals_{i}" for i in range(EVAL_BLEU_ORDER)])


def _reduce_bleu(logging_outputs):
    """Sums the sufficient statistics that TranslationTask.valid_step logs and derives sacreBLEU."""
    def total(key):
        return int(sum(int(log.get(key, 0)) for log in logging_outputs))

    # Only validation steps carry BLEU statistics. fairseq also skips batches whose hypotheses are all
    # empty (no n-grams), so a young model has no 'bleu' at all and --best-checkpoint-metric bleu
    # dies with KeyError 'bleu'; such batches count here, as BLEU 0.
    if not any("_bleu_totals_0" in log for log in logging_outputs):
        return
    for key in _BLEU_SUM_KEYS:
        metrics.log_scalar_sum(key, total(key))
    metrics.log_derived("bleu", _bleu_from_meters)


def _bleu_from_meters(meters) -> float:
    from sacrebleu.metrics import BLEU

    def summed(key):
        return int(meters[key].sum)

    score = BLEU.compute_bleu(
        correct=[summed(f"_bleu_counts_{i}") for i in range(EVAL_BLEU_ORDER)],
        total=[summed(f"_bleu_totals_{i}") for i in range(EVAL_BLEU_ORDER)],
        sys_len=summed("_bleu_sys_len"), ref_len=summed("_bleu_ref_len"), smooth_method="exp").score
    return round(float(score), 2)


def check_data_dirs(data: str, source_lang, target_lang):
    """One-line errors, naming the directory and what it holds, where fairseq would fail deep inside
    with a bare FileNotFoundError or 'Could not infer language pair'."""
    for path in utils.split_paths(data):
        if not os.path.isdir(path):
            raise DataDirError(f"data directory {path} does not exist")
        langs = sorted(name[len("dict."):-len(".txt")] for name in os.listdir(path)
                       if name.startswith("dict.") and name.endswith(".txt"))
        if not langs:
            raise DataDirError(f"data directory {path} has no dict.*.txt: it is not fairseq-preprocess output")
        for flag, lang in (("--source-lang", source_lang), ("--target-lang", target_lang)):
            if lang is not None and lang not in langs:
                raise DataDirError(f"{flag} {lang}: {path} has no dict.{lang}.txt "
                                        f"(its languages: {', '.join(langs)})")
