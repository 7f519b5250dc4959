"""The encouraging_ls criterion inside real fairseq: equivalence, logging, flags, options."""
import copy
import math

import pytest
import torch

from helpers import TINY_TRANSFORMER, USER_DIR, json_records, run_tool


from fairseq import metrics, options, tasks, utils  # noqa: E402
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402


def build(data_bin, *extra):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [
        str(data_bin), "--task", "translation", "--source-lang", "src", "--target-lang", "tgt",
        *TINY_TRANSFORMER, "--dropout", "0", "--user-dir", USER_DIR, "--criterion", "encouraging_ls",
        "--label-smoothing", "0.1", "--cpu", *extra])
    utils.import_user_module(args)
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return cfg, task


@pytest.fixture(scope="module")
def setup(toy_data_bin):
    cfg, task = build(toy_data_bin)
    task.load_dataset("valid")
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    iterator = task.get_batch_iterator(task.dataset("valid"), max_tokens=400, seed=1).next_epoch_itr(shuffle=False)
    return cfg, task, model, next(iterator)


def loss_and_grads(criterion, model, sample):
    model.zero_grad()
    loss, sample_size, logging_output = criterion(model, sample)
    loss.backward()
    return loss.detach(), sample_size, logging_output, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("prefix,sentence_avg", [(0, False), (1, True)])
def test_rho_zero_equals_fairseq_label_smoothed_cross_entropy(setup, toy_data_bin, impl, prefix, sentence_avg):
    _, _, model, sample = setup
    extra = ["--bonus-rho", "0", "--el-impl", impl, "--report-accuracy", "--ignore-prefix-size", str(prefix)]
    cfg, task = build(toy_data_bin, *extra, *(["--sentence-avg"] if sentence_avg else []))
    ours = task.build_criterion(cfg.criterion)
    theirs = LabelSmoothedCrossEntropyCriterion(task, sentence_avg, 0.1, ignore_prefix_size=prefix,
                                                report_accuracy=True)
    # fairseq computes its log-probabilities in float32 whatever the model's dtype: compare there
    got = loss_and_grads(ours, model, sample)
    want = loss_and_grads(theirs, model, sample)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-5)
    assert got[1] == want[1]
    for key in ("nll_loss", "ntokens", "nsentences", "sample_size", "n_correct", "total"):
        torch.testing.assert_close(torch.as_tensor(got[2][key]).double(), torch.as_tensor(want[2][key]).double(),
                                   rtol=1e-6, atol=1e-5, msg=key)
    # float32 sums over hundreds of tokens; some parameters' true gradient is ~0 (pure rounding noise),
    # so the tolerance is relative to the whole gradient's scale
    mine, reference = torch.cat([g.flatten() for g in got[3]]), torch.cat([g.flatten() for g in want[3]])
    torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_overwriting_the_decoder_logits_changes_no_gradient(setup, toy_data_bin, dtype):
    """By default the fused path stores the gradient in the decoder's logits (nothing reads them
    after the loss); --el-keep-logits stores it beside them. Same loss, logs and parameter
    gradients, bit for bit, also for a half-precision model under a loss scale as in --fp16."""
    _, _, model, sample = setup
    model = copy.deepcopy(model).to(dtype)
    logits_seen = []
    hook = model.decoder.output_projection.register_forward_hook(
        lambda module, inputs, output: logits_seen.append((output, output.detach().clone())))
    runs = []
    try:
        for extra in ([], ["--el-keep-logits"]):
            cfg, task = build(toy_data_bin, "--el-impl", "fused", *extra)
            criterion = task.build_criterion(cfg.criterion)
            model.zero_grad()
            loss, _, log = criterion(model, sample)
            (loss * 128.0).backward()  # fairseq's fp16 optimizer scales the loss like this
            logits, as_computed = logits_seen.pop()
            runs.append((loss.detach(), log, [p.grad.clone() for p in model.parameters()],
                         torch.equal(logits.detach(), as_computed)))
    finally:
        hook.remove()
    (overwrite_loss, overwrite_log, overwrite_grads, overwrite_intact), (loss, log, grads, intact) = runs
    assert intact and not overwrite_intact
    assert torch.equal(overwrite_loss, loss)
    for key in ("nll_loss", "ce_loss", "bonus", "el_target_prob", "el_margin"):
        assert torch.equal(overwrite_log[key], log[key]), key
    assert all(torch.equal(a, b) for a, b in zip(overwrite_grads, grads))
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_bonus_changes_loss_by_rho_times_bonus_and_logs_it(setup, toy_data_bin):
    _, _, model, sample = setup
    cfg, task = build(toy_data_bin, "--bonus-rho", "0.7", "--log-end", "0.5")
    criterion = task.build_criterion(cfg.criterion)
    with torch.no_grad():
        loss, sample_size, log = criterion(model, sample)
        baseline, _, base_log = LabelSmoothedCrossEntropyCriterion(task, False, 0.1)(model, sample)
    torch.testing.assert_close(log["ce_loss"], baseline.float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, log["ce_loss"] + 0.7 * log["bonus"], rtol=1e-5, atol=1e-4)
    assert float(log["bonus"]) < 0  # b <= 0: the bonus lowers the loss
    torch.testing.assert_close(log["nll_loss"], base_log["nll_loss"].float(), rtol=1e-5, atol=1e-4)

    with metrics.aggregate() as agg:
        type(criterion).reduce_metrics([log, log])
    values = agg.get_smoothed_values()
    ln2 = math.log(2)
    assert values["loss"] == pytest.approx(round(float(loss) / sample_size / ln2, 3), abs=1e-3)
    assert values["nll_loss"] == pytest.approx(round(float(log["nll_loss"]) / log["ntokens"] / ln2, 3), abs=1e-3)
    assert values["ppl"] == pytest.approx(2 ** values["nll_loss"], rel=1e-2)
    assert values["bonus_weight"] == pytest.approx(0.7)
    target_prob = float(log["el_target_prob"] / log["el_tokens"])
    assert values["p_target"] == pytest.approx(target_prob, abs=1e-4)


def test_bonus_scale_multiplies_rho(setup, toy_data_bin):
    _, _, model, sample = setup
    cfg, task = build(toy_data_bin, "--bonus-rho", "2.0")
    criterion = task.build_criterion(cfg.criterion)
    criterion.set_step(bonus_scale=0.25)
    with torch.no_grad():
        loss, _, log = criterion(model, sample)
    torch.testing.assert_close(loss, log["ce_loss"] + 0.5 * log["bonus"], rtol=1e-5, atol=1e-4)
    assert float(log["el_bonus_weight"] / log["el_tokens"]) == pytest.approx(0.5)


@pytest.mark.parametrize("flag,value", [("--log-end", "0"), ("--label-smoothing", "1.0"), ("--bonus-rho", "-1"),
                                        ("--bonus-gamma", "0"), ("--el-label-smoothing", "1.5"),
                                        ("--bonus-start", "1")])
def test_bad_value_names_the_flag(toy_data_bin, flag, value):
    cfg, task = build(toy_data_bin, flag, value)
    with pytest.raises(ValueError, match=f"^{flag} must be"):
        task.build_criterion(cfg.criterion)


def test_unknown_bonus_is_rejected_by_the_parser(toy_data_bin, capsys):
    with pytest.raises(SystemExit):
        build(toy_data_bin, "--bonus", "square")
    assert "--bonus: invalid choice: 'square'" in capsys.readouterr().err


def test_bad_flag_stops_fairseq_train_before_anything_is_written(toy_data_bin, tmp_path):
    proc = run_tool("fairseq-train", toy_data_bin, "--user-dir", USER_DIR, "--task", "translation",
                    *TINY_TRANSFORMER, "--criterion", "encouraging_ls", "--log-end", "1.5", "--optimizer", "adam",
                    "--lr", "1e-3", "--max-tokens", "500", "--max-update", "1", "--cpu",
                    "--save-dir", tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["fairseq-train: error: --log-end must be in (0, 1], got 1.5"]
    assert not list(tmp_path.glob("*.pt"))


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("prefix", [0, 2])
def test_compute_loss_hook_returns_the_encouraging_loss_of_forward(setup, toy_data_bin, impl, prefix):
    """fairseq's compute_loss is what other code (tasks, wrappers) calls: it must carry the bonus,
    leave the caller's logits intact, and its siblings must drop the same prefix."""
    from encouraging_loss import EncouragingLossOptions, encouraging_loss

    _, _, model, sample = setup
    cfg, task = build(toy_data_bin, "--bonus-rho", "0.7", "--log-end", "0.6", "--el-impl", impl,
                      "--ignore-prefix-size", str(prefix))
    criterion = task.build_criterion(cfg.criterion)
    criterion.set_step(bonus_scale=0.5)
    with torch.no_grad():
        net_output = model(**sample["net_input"])
        logits = net_output[0].clone()
        loss, nll_loss = criterion.compute_loss(model, net_output, sample)
        assert torch.equal(net_output[0], logits), "compute_loss must not overwrite the caller's logits"
        forward_loss, _, log = criterion(model, sample)
        n_correct, total = criterion.compute_accuracy(model, net_output, sample)
        lprobs, flat_target = criterion.get_lprobs_and_target(model, net_output, sample)
    target = sample["target"][:, prefix:]
    expected = encouraging_loss(logits[:, prefix:].double(), target, EncouragingLossOptions(
        label_smoothing=0.1, bonus_rho=0.35, log_end=0.6), ignore_index=task.target_dictionary.pad(),
        reduction="sum", impl="reference")
    torch.testing.assert_close(loss.double(), expected.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(nll_loss.double(), expected.nll_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss, forward_loss, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll_loss, log["nll_loss"], rtol=1e-6, atol=1e-5)
    assert float(expected.bonus) < 0 and float(loss) < float(expected.ce_loss) - 1e-3, "the bonus is in the loss"
    # accuracy and log-probabilities: over the same positions, against a plain computation
    scored = target.ne(task.target_dictionary.pad())
    assert int(total) == int(scored.sum())
    assert int(n_correct) == int((logits[:, prefix:].argmax(-1) == target)[scored].sum())
    assert flat_target.tolist() == target.reshape(-1).tolist()
    torch.testing.assert_close(lprobs, torch.log_softmax(logits[:, prefix:].float(), -1).view(-1, logits.size(-1)))


@pytest.mark.parametrize("sharing", [[], ["--share-decoder-input-output-embed"], ["--share-all-embeddings"]])
@pytest.mark.parametrize("prefix", [0, 1])
def test_fused_projection_gives_the_same_loss_logs_and_gradients(toy_data_bin, sharing, prefix):
    """--el-fuse-projection: the decoder's features and its output projection go into the loss
    instead of the logits. Same loss, logged values and parameter gradients (the shared embedding's
    included) as the loss on the decoder's logits, under a bonus schedule and a loss scale."""
    extra = ["--bonus-rho", "0.7", "--report-accuracy", "--ignore-prefix-size", str(prefix), *sharing]
    cfg, task = build(toy_data_bin, *extra)
    task.load_dataset("valid")
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    sample = next(task.get_batch_iterator(task.dataset("valid"), max_tokens=400, seed=1).next_epoch_itr(shuffle=False))
    if sharing:
        assert model.decoder.output_projection.weight is model.decoder.embed_tokens.weight
    runs = []
    for fuse in ([], ["--el-fuse-projection"]):
        criterion = task.build_criterion(build(toy_data_bin, *extra, *fuse)[0].criterion)
        criterion.set_step(bonus_scale=0.5)
        model.zero_grad()
        loss, sample_size, log = criterion(model, sample)
        (loss * 128.0).backward()
        runs.append((loss.detach(), sample_size, log, [p.grad.clone() for p in model.parameters()]))
    (loss, sample_size, log, grads), (fused_loss, fused_size, fused_log, fused_grads) = runs
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-5)
    assert fused_size == sample_size and sorted(fused_log) == sorted(log)
    for key, value in log.items():
        torch.testing.assert_close(torch.as_tensor(fused_log[key]).double(), torch.as_tensor(value).double(),
                                   rtol=1e-5, atol=1e-4, msg=key)
    mine, reference = torch.cat([g.flatten() for g in fused_grads]), torch.cat([g.flatten() for g in grads])
    torch.testing.assert_close(mine, reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    assert float(log["bonus"]) != 0.0 and float(reference.abs().max()) > 0


def test_fused_projection_refuses_models_it_cannot_fuse(setup, toy_data_bin):
    cfg, task = build(toy_data_bin, "--adaptive-softmax-cutoff", "20,40", "--el-fuse-projection")
    task.load_dataset("valid")
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    _, _, _, sample = setup
    with pytest.raises(RuntimeError, match="^--el-fuse-projection cannot fuse the output layer of TransformerModel: "
                                         "it uses an adaptive softmax$"):
        criterion(model, sample)
    cfg, task = build(toy_data_bin, "--el-fuse-projection", "--el-impl", "reference")
    with pytest.raises(ValueError, match="^--el-fuse-projection needs the fused loss"):
        task.build_criterion(cfg.criterion)


@pytest.mark.slow
def test_fairseq_train_with_a_fused_projection_follows_the_same_loss_curve(toy_data_bin, tmp_path):
    """A few updates of fairseq-train, same seed, with and without --el-fuse-projection (shared
    embeddings): the same logged losses; a model it cannot fuse stops it with one line."""
    common = [toy_data_bin, "--user-dir", USER_DIR, "--task", "translation", *TINY_TRANSFORMER,
              "--share-all-embeddings", "--criterion", "encouraging_ls", "--label-smoothing", "0.1",
              "--optimizer", "adam", "--lr", "5e-3", "--max-tokens", "500", "--max-update", "6", "--seed", "3",
              "--log-format", "json", "--log-interval", "1", "--no-save", "--disable-validation",
              "--num-workers", "0", "--cpu"]
    curves = []
    for fuse in ([], ["--el-fuse-projection"]):
        proc = run_tool("fairseq-train", *common, *fuse, "--save-dir", tmp_path / f"save{len(curves)}")
        records = json_records(proc.stdout + proc.stderr, "train_inner")
        curves.append([[float(r[key]) for r in records] for key in ("loss", "nll_loss", "bonus", "p_target")])
    assert len(curves[0][0]) == 6
    for key, fused, logits in zip(("loss", "nll_loss", "bonus", "p_target"), curves[1], curves[0]):
        assert fused == pytest.approx(logits, abs=2e-3), key  # fairseq logs 3 to 4 decimals
    assert curves[0][0][-1] < curves[0][0][0] - 0.1  # it trained
    refused = tmp_path / "refused"
    proc = run_tool("fairseq-train", *common, "--el-fuse-projection", "--adaptive-softmax-cutoff", "20,40",
                    "--save-dir", refused, check=False)
    assert proc.returncode == 1, proc.stderr[-500:]  # not an abort from fairseq's data thread (134)
    # the refusal comes at the first step (the criterion meets the model there), as a RuntimeError,
    # which fairseq's trainer re-raises without first saving a crash.pt checkpoint
    assert ("fairseq-train: error: --el-fuse-projection cannot fuse the output layer of TransformerModel: "
            "it uses an adaptive softmax") in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and "terminate called" not in proc.stderr
    assert not list(refused.glob("*.pt"))
