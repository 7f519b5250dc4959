"""The encouraging loss as a transformers Trainer's compute_loss_func, against independent
computations: the model's own cross-entropy, fairseq's label-smoothed CE written out here, one large
batch against gradient accumulation, an uninterrupted run against a resumed one."""
import math
import warnings

import pytest
import torch

from tiny_marian import make_trainer, parameters, step_logs, transformers  # noqa: F401 (skips without it)

from encouraging_loss.integrations.huggingface import EncouragingLossFunc
from encouraging_loss.schedule import BonusSchedule

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fairseq_label_smoothed_ce(logits, labels, eps):
    """fairseq's label_smoothed_nll_loss summed over labels != -100: eps / (V - 1) on the other classes."""
    lprobs = torch.log_softmax(logits.double(), dim=-1).reshape(-1, logits.size(-1))
    labels = labels.reshape(-1)
    valid = labels.ne(-100)
    lprobs, labels = lprobs[valid], labels[valid]
    nll = -lprobs.gather(1, labels[:, None]).squeeze(1)
    smooth = -lprobs.sum(-1)
    eps_i = eps / (logits.size(-1) - 1)
    return ((1.0 - eps - eps_i) * nll + eps_i * smooth).sum(), lprobs.gather(1, labels[:, None]).exp().mean()


class OracleLoss:
    """compute_loss_func with fairseq's label-smoothed CE; records p_target per training call."""

    def __init__(self, eps):
        self.eps, self.p_target = eps, []

    def __call__(self, outputs, labels, num_items_in_batch=None):
        total, p_target = fairseq_label_smoothed_ce(outputs["logits"], labels, self.eps)
        if torch.is_grad_enabled():
            self.p_target.append(float(p_target))
        return (total / num_items_in_batch).to(outputs["logits"].dtype)


def assert_same_runs(a, b, rel=1e-5):
    losses_a, losses_b = step_logs(a), step_logs(b)
    assert sorted(losses_a) == sorted(losses_b) == list(range(1, a.args.max_steps + 1))
    for step in losses_a:
        assert losses_b[step] == pytest.approx(losses_a[step], rel=rel), step
    torch.testing.assert_close(parameters(b.model), parameters(a.model), rtol=1e-4, atol=1e-5)


def test_rho_0_without_smoothing_is_the_models_own_loss_step_for_step(tmp_path):
    builtin = make_trainer(tmp_path / "builtin")
    builtin.train()
    ours = make_trainer(tmp_path / "ours")
    EncouragingLossFunc(bonus_rho=0.0, label_smoothing=0.0).attach(ours)
    ours.train()
    assert_same_runs(builtin, ours)


def test_with_smoothing_it_is_fairseqs_label_smoothed_ce_and_logs_its_diagnostics(tmp_path):
    oracle = OracleLoss(eps=0.1)
    reference = make_trainer(tmp_path / "oracle", compute_loss_func=oracle)
    reference.train()
    ours = make_trainer(tmp_path / "ours", report_to=["tensorboard"])  # events under output_dir/runs/
    EncouragingLossFunc(bonus_rho=0.0, label_smoothing=0.1).attach(ours)
    ours.train()
    assert_same_runs(reference, ours)
    # the diagnostics: in the Trainer's logs and in TensorBoard's event file, equal to the oracle's p_target
    logged = step_logs(ours, "el_p_target")
    assert [logged[step] for step in sorted(logged)] == pytest.approx(oracle.p_target, rel=1e-4)
    assert set(step_logs(ours, "el_bonus_weight").values()) == {0.0}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    [run] = [path for path in (tmp_path / "ours").rglob("events.out.tfevents.*")]
    events = EventAccumulator(str(run.parent))
    events.Reload()
    for tag in ("train/el_p_target", "train/el_p_gt_half", "train/el_p_gt_le", "train/el_margin",
                "train/el_bonus_weight"):
        assert tag in events.Tags()["scalars"], tag
    written = {event.step: event.value for event in events.Scalars("train/el_p_target")}
    assert written == {step: pytest.approx(value, rel=1e-6) for step, value in logged.items()}


def test_gradient_accumulation_2_on_batch_b_is_accumulation_1_on_batch_2b(tmp_path):
    def run(name, batch, accumulation):
        trainer = make_trainer(tmp_path / name, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accumulation, max_steps=3)
        EncouragingLossFunc(label_smoothing=0.1, bonus_rho=1.0, log_end=0.5).attach(trainer)
        trainer.train()
        return trainer

    assert_same_runs(run("large", 4, 1), run("accumulated", 2, 2))


def test_the_schedule_across_a_resume_is_the_uninterrupted_runs(tmp_path):
    def trainer(name):
        trainer = make_trainer(tmp_path / name, max_steps=6, save_strategy="steps", save_steps=3)
        EncouragingLossFunc(label_smoothing=0.1, bonus_rho=0.5, schedule=BonusSchedule("linear", warmup_updates=5,
                                                                                       start_update=1)).attach(trainer)
        return trainer

    whole = trainer("whole")
    whole.train()
    resumed = trainer("resumed")  # a fresh loss function: the step count must come from the checkpoint
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3"))
    expected = {n: 0.5 * min(1.0, max(0.0, (n - 1) / 5)) for n in range(1, 7)}  # linear from update 2 to 6
    assert step_logs(whole, "el_bonus_weight") == pytest.approx(expected, abs=1e-7)
    weights = step_logs(resumed, "el_bonus_weight")
    assert {n: weights[n] for n in (4, 5, 6)} == pytest.approx({n: expected[n] for n in (4, 5, 6)}, abs=1e-7)
    torch.testing.assert_close(parameters(resumed.model), parameters(whole.model), rtol=1e-5, atol=1e-6)


def test_label_smoothing_factor_is_refused_and_generation_eval_loss_is_named(tmp_path):
    with pytest.raises(ValueError, match="label_smoothing_factor=0.1 is ignored") as error:
        EncouragingLossFunc().attach(make_trainer(tmp_path / "a", label_smoothing_factor=0.1))
    assert "\n" not in str(error.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EncouragingLossFunc().attach(make_trainer(tmp_path / "b", predict_with_generate=True))
    assert any("eval_loss with the model's own cross-entropy" in str(w.message) for w in caught)


def test_a_schedule_without_the_callback_is_an_error_not_a_silent_constant():
    loss_func = EncouragingLossFunc(schedule=BonusSchedule("linear", warmup_updates=4))
    logits = torch.randn(2, 3, 7, requires_grad=True)
    with pytest.raises(RuntimeError, match="attach"):
        loss_func({"logits": logits}, torch.zeros(2, 3, dtype=torch.long), 6)


@pytest.mark.parametrize("count", [5, 5.0, torch.tensor(5), torch.tensor(5.0), torch.full((2, 1), 5), None])
def test_every_form_of_num_items_in_batch_divides_the_sum(count):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11, dtype=torch.float64)
    labels = torch.tensor([[3, 4, -100, -100], [1, 2, 10, -100]])
    total, _ = fairseq_label_smoothed_ce(logits, labels, 0.2)
    loss = EncouragingLossFunc(bonus_rho=0.0, label_smoothing=0.2)({"logits": logits}, labels, count)
    assert float(loss) == pytest.approx(float(total) / 5, rel=1e-10)


def test_the_causal_shift_scores_position_i_against_label_i_plus_1():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 9, dtype=torch.float64)
    labels = torch.tensor([[-100, 3, 4, 5, -100], [-100, 1, 2, 8, 7]])
    total, _ = fairseq_label_smoothed_ce(logits[:, :-1], labels[:, 1:], 0.0)
    loss = EncouragingLossFunc(bonus_rho=0.0, shift_labels=True)((logits,), labels, 7)
    assert float(loss) == pytest.approx(float(total) / 7, rel=1e-10)
    bonus = EncouragingLossFunc(bonus_rho=1.0, shift_labels=True)((logits,), labels, 7)
    p = torch.softmax(logits[:, :-1], -1).gather(2, labels[:, 1:].clamp_min(0)[..., None]).squeeze(-1)
    b = torch.where(p <= 0.5, torch.log1p(-p), math.log(0.5) - (p - 0.5) / 0.5)[labels[:, 1:].ne(-100)]
    assert float(bonus) == pytest.approx((float(total) + float(b.sum())) / 7, rel=1e-10)


def test_which_loss_eval_loss_is_with_and_without_predict_with_generate(tmp_path):
    from tiny_marian import collate, toy_pairs
    pairs = toy_pairs(n=6, seed=3)
    batch = collate(pairs)
    labels = batch.pop("labels")

    def eval_loss(generate):
        trainer = make_trainer(tmp_path / f"g{generate}", predict_with_generate=generate, generation_max_length=4,
                               per_device_eval_batch_size=len(pairs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            EncouragingLossFunc(label_smoothing=0.1, bonus_rho=0.0).attach(trainer)
        trainer.compute_metrics = lambda prediction: {}  # without metrics no generation happens at all
        with torch.no_grad():
            logits = trainer.model.eval()(**batch).logits
        return trainer.evaluate(eval_dataset=pairs)["eval_loss"], logits

    ours, logits = eval_loss(False)
    smoothed, _ = fairseq_label_smoothed_ce(logits, labels, 0.1)
    assert ours == pytest.approx(float(smoothed) / int(labels.ne(-100).sum()), rel=1e-5)
    generated, logits = eval_loss(True)  # the model's own cross-entropy, as the warning says
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
    assert generated == pytest.approx(float(plain), rel=1e-5)


def test_fused_projection_trains_step_for_step_like_the_logits(tmp_path):
    """fuse_projection: the backbone's hidden states and the output layer (tied to the embeddings, plus
    Marian's final_logits_bias) through linear_encouraging_loss, against the loss on the model's logits."""
    runs = []
    for fuse in (False, True):
        trainer = make_trainer(tmp_path / f"fuse{fuse}")
        with torch.no_grad():  # a non-zero final_logits_bias, so that leaving it out would show
            trainer.model.final_logits_bias.copy_(torch.linspace(-1.0, 1.0, trainer.model.final_logits_bias.numel()))
        EncouragingLossFunc(bonus_rho=1.0, label_smoothing=0.1, log_end=0.75, fuse_projection=fuse).attach(trainer)
        trainer.train()
        runs.append(trainer)
    assert_same_runs(*runs, rel=1e-4)
    for key in ("el_p_target", "el_margin", "el_bonus"):
        unfused, fused = step_logs(runs[0], key), step_logs(runs[1], key)
        assert fused == {step: pytest.approx(value, rel=1e-4, abs=1e-6) for step, value in unfused.items()}, key


def test_fused_projection_refuses_a_model_whose_logits_are_not_its_output_layers(tmp_path):
    class ScaledLogits(transformers.MarianMTModel):
        def forward(self, *args, **kwargs):
            output = super().forward(*args, **kwargs)
            output.logits = output.logits * 2.0
            return output

    trainer = make_trainer(tmp_path / "scaled", remove_unused_columns=False)  # forward(*args, **kwargs)
    trainer.model = ScaledLogits(trainer.model.config)
    trainer.model_wrapped = trainer.model
    EncouragingLossFunc(fuse_projection=True).attach(trainer)
    from encouraging_loss.integrations.huggingface import FusedProjectionError
    with pytest.raises(FusedProjectionError, match="ScaledLogits's logits are not its output layer applied"):
        trainer.train()
