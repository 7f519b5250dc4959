"""The translation_encouraging task: bonus schedule, sparse diagnostics, BLEU during validation,
its architecture, and fairseq-train / generate / interactive on checkpoints it wrote."""
import json
import math
import random

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from helpers import TINY_TRANSFORMER, USER_DIR, json_records, run_tool

from encouraging_loss import EncouragingLossOptions, OptionError, encouraging_loss
from encouraging_loss.schedule import BonusSchedule
from fairseq.data import Dictionary  # noqa: E402
from fairseq.logging import metrics  # noqa: E402

from fairseq_plugins.criterions.encouraging_ls import EncouragingLabelSmoothedCrossEntropyCriterion  # noqa: E402
from fairseq_plugins.tasks.translation_encouraging import (  # noqa: E402
    TranslationEncouragingConfig,
    TranslationEncouragingTask,
)


# ---------------------------------------------------------------- task + criterion in-process
class FixedLogitsModel(nn.Module):
    """Stands in for a fairseq model: returns given decoder logits (a leaf, so backward works)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.decoder = nn.Module()
        self.decoder.adaptive_softmax = None

    def forward(self, **net_input):
        return self.logits, {}

    def get_targets(self, sample, net_output):
        return sample["target"]

    def set_num_updates(self, num_updates):
        pass


class BackwardOnlyOptimizer:
    def backward(self, loss):
        loss.backward()


def make_task(**cfg_fields):
    dictionary = Dictionary()
    for i in range(40):
        dictionary.add_symbol(f"w{i}")
    cfg_fields.setdefault("train_subset", "train")  # fairseq fills it from --train-subset
    return TranslationEncouragingTask(TranslationEncouragingConfig(**cfg_fields), dictionary, dictionary)


def fixed_batch(task, seed=0, batch=3, length=7):
    generator = torch.Generator().manual_seed(seed)
    vocab = len(task.target_dictionary)
    target = torch.randint(4, vocab, (batch, length), generator=generator)
    target[0, -2:] = task.target_dictionary.pad()
    target[2, -1] = task.target_dictionary.pad()
    logits = torch.randn(batch, length, vocab, generator=generator)
    # make some tokens well classified, with p_y above 1/2 and above LE, so the counts are not all zero
    confident = torch.rand(batch, length, generator=generator) < 0.5
    logits.scatter_add_(-1, target.unsqueeze(-1), (confident.float() * 6.0 + 1.0).unsqueeze(-1))
    sample = {"net_input": {}, "target": target, "ntokens": int(target.ne(task.target_dictionary.pad()).sum())}
    return logits, sample


def independent_diagnostics(logits, target, pad, log_end):
    scored = target.ne(pad)
    z = logits[scored].double()
    y = target[scored]
    p_y = torch.softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    others = z.clone()
    others[torch.arange(len(y)), y] = float("-inf")
    margin = z.gather(-1, y[:, None]).squeeze(-1) - others.max(-1).values
    return {"p_target": p_y.mean().item(), "p_gt_half": (p_y > 0.5).double().mean().item(),
            "p_gt_le": (p_y > log_end).double().mean().item(), "margin": margin.mean().item()}


def reduced(criterion, logging_outputs):
    with metrics.aggregate(new_root=True) as aggregator:
        criterion.reduce_metrics(logging_outputs)
        return {key: float(value) for key, value in aggregator.get_smoothed_values().items()}


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_diagnostics_match_an_independent_computation(impl):
    task = make_task()
    log_end = 0.7
    criterion = EncouragingLabelSmoothedCrossEntropyCriterion(
        task, False, 0.1, bonus_rho=0.6, log_end=log_end, el_impl=impl)
    logits, sample = fixed_batch(task)
    assert 0 < (torch.softmax(logits, -1).gather(-1, sample["target"][..., None]) > log_end).sum() < logits[..., 0].numel()
    _, _, logging_output = criterion(FixedLogitsModel(logits), sample)
    expected = independent_diagnostics(logits, sample["target"], task.target_dictionary.pad(), log_end)
    logged = reduced(criterion, [logging_output])
    for name, value in expected.items():
        assert logged[name] == pytest.approx(value, abs=2e-3 if name == "margin" else 2e-4), name
    assert logged["bonus_weight"] == pytest.approx(0.6)


def test_task_drives_bonus_weight_and_diagnostics_interval_per_update():
    rho, interval = 0.8, 3
    task = make_task(bonus_schedule="cosine", bonus_warmup_updates=4, bonus_start_update=2,
                     diagnostics_interval=interval)
    criterion = EncouragingLabelSmoothedCrossEntropyCriterion(task, False, 0.1, bonus_rho=rho)
    schedule = BonusSchedule("cosine", warmup_updates=4, start_update=2)
    logits, sample = fixed_batch(task, seed=1)
    model = FixedLogitsModel(logits)
    for update_num in range(8):  # fairseq passes the number of updates done so far
        n = update_num + 1
        loss, _, log = task.train_step(sample, model, criterion, BackwardOnlyOptimizer(), update_num)
        assert criterion.bonus_scale == schedule(n)
        assert reduced(criterion, [log])["bonus_weight"] == pytest.approx(rho * schedule(n), abs=1e-4)
        assert ("el_target_prob" in log) == (n % interval == 0), f"diagnostics at update {n}"
        # the loss really uses the scheduled weight: an independent call at rho * s(n)
        plain = encouraging_loss(logits, sample["target"], EncouragingLossOptions(
            label_smoothing=0.1, bonus_rho=rho * schedule(n)), ignore_index=task.target_dictionary.pad(),
            reduction="sum")
        assert loss.item() == pytest.approx(plain.loss.item(), rel=1e-5)
    _, _, log = task.valid_step(sample, model, criterion)
    assert "el_target_prob" in log, "validation always computes the diagnostics"
    assert criterion.bonus_scale == schedule(8)


def test_schedule_follows_fairseqs_update_count_on_a_fresh_task_as_after_a_resume():
    """After --restore-file the task is new and fairseq passes the restored update count: the weight is
    s(update_num + 1) at once, not a schedule restarted from 0 (only a slow resume run noticed before)."""
    schedule = BonusSchedule("linear", warmup_updates=10, start_update=3)
    for update_num in (0, 4, 7, 12, 500):
        task = make_task(bonus_schedule="linear", bonus_warmup_updates=10, bonus_start_update=3)
        criterion = EncouragingLabelSmoothedCrossEntropyCriterion(task, False, 0.1, bonus_rho=0.5)
        logits, sample = fixed_batch(task, seed=update_num)
        task.train_step(sample, FixedLogitsModel(logits), criterion, BackwardOnlyOptimizer(), update_num)
        assert criterion.bonus_scale == schedule(update_num + 1), update_num


def test_validation_before_any_training_update_uses_the_full_bonus():
    """fairseq-validate (no training update in this process) scores with the complete schedule, s = 1,
    even when the schedule's start would give 0: the loss is the encouraging loss at full rho."""
    rho = 0.9
    task = make_task(bonus_schedule="cosine", bonus_warmup_updates=5, bonus_start_update=4)
    criterion = EncouragingLabelSmoothedCrossEntropyCriterion(task, False, 0.1, bonus_rho=rho)
    logits, sample = fixed_batch(task, seed=5)
    loss, _, log = task.valid_step(sample, FixedLogitsModel(logits), criterion)
    assert criterion.bonus_scale == 1.0
    full = encouraging_loss(logits, sample["target"], EncouragingLossOptions(label_smoothing=0.1, bonus_rho=rho),
                            ignore_index=task.target_dictionary.pad(), reduction="sum")
    assert loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert reduced(criterion, [log])["bonus_weight"] == pytest.approx(rho)


def test_logged_loss_parts_share_the_units_of_loss():
    """fairseq logs loss in bits per token; ce_loss and bonus must be in bits too, so that the logged
    loss = ce_loss + bonus_weight * bonus (a bonus in nats passed every other test)."""
    rho = 0.7
    task = make_task()
    criterion = EncouragingLabelSmoothedCrossEntropyCriterion(task, False, 0.1, bonus_rho=rho)
    logits, sample = fixed_batch(task, seed=2)
    _, sample_size, log = criterion(FixedLogitsModel(logits), sample)
    logged = reduced(criterion, [log, log])
    bits = math.log(2)
    parts = encouraging_loss(logits.double(), sample["target"], EncouragingLossOptions(label_smoothing=0.1,
                             bonus_rho=rho), ignore_index=task.target_dictionary.pad(), reduction="sum")
    assert logged["ce_loss"] == pytest.approx(parts.ce_loss.item() / sample_size / bits, abs=1e-3)
    assert logged["bonus"] == pytest.approx(parts.bonus.item() / sample_size / bits, abs=1e-3)
    assert logged["loss"] == pytest.approx(logged["ce_loss"] + logged["bonus_weight"] * logged["bonus"], abs=3e-3)


class ElementCounter(TorchDispatchMode):
    """Counts the tensor elements every ATen op reads: a full pass over (N, V) reads N * V."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.elements += sum(t.numel() for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor))
        return func(*args, **(kwargs or {}))


def elements_read(impl, with_stats, logits, target):
    counter = ElementCounter()
    with counter:
        out = encouraging_loss(logits, target, impl=impl, with_stats=with_stats, label_smoothing=0.1)
        out.loss.backward()
    return counter.elements


def test_diagnostics_are_free_on_the_fused_path_and_a_full_pass_on_the_reference_path():
    rows, vocab = 64, 4096
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, vocab, (rows,), generator=generator)
    full_pass = rows * vocab
    extra = {}
    for impl in ("fused", "reference"):
        reads = [elements_read(impl, with_stats, torch.randn(rows, vocab, generator=generator,
                                                             requires_grad=True), target)
                 for with_stats in (False, True)]
        extra[impl] = reads[1] - reads[0]
    # fused: the stats are O(rows) bookkeeping on what the loss sweep already produced
    assert 0 < extra["fused"] < 0.05 * full_pass, extra
    # reference: masking the target out and taking the others' max reads (rows, vocab) at least twice
    assert extra["reference"] >= 2 * full_pass, extra


def bleu_logging_output(hypotheses, references):
    """What TranslationTask.valid_step logs for one batch, with sacreBLEU's statistics."""
    import sacrebleu
    bleu = sacrebleu.corpus_bleu(hypotheses, [references])
    output = {"loss": 0.0, "nll_loss": 0.0, "ntokens": 1, "nsentences": 1, "sample_size": 1,
              "_bleu_sys_len": bleu.sys_len, "_bleu_ref_len": bleu.ref_len}
    for i in range(4):
        output[f"_bleu_counts_{i}"], output[f"_bleu_totals_{i}"] = bleu.counts[i], bleu.totals[i]
    return output


def test_validation_bleu_is_corpus_sacrebleu_a_float_and_checkpoint_safe(tmp_path):
    import sacrebleu
    task = make_task(eval_bleu=True)
    criterion = EncouragingLabelSmoothedCrossEntropyCriterion(task, False, 0.1)
    batches = [(["the cat sat on the mat", "a dog barks loudly today"], ["the cat sat on a mat", "a dog barks today"]),
               (["hello there my friend", ""], ["hello there my old friend", "nothing at all here"])]
    with metrics.aggregate(new_root=True) as aggregator:
        for hypotheses, references in batches:
            task.reduce_metrics([bleu_logging_output(hypotheses, references)], criterion)
        bleu = aggregator.get_smoothed_values()["bleu"]
        state = aggregator.state_dict()
    expected = sacrebleu.corpus_bleu([h for b in batches for h in b[0]], [[r for b in batches for r in b[1]]])
    assert bleu == round(expected.score, 2) and type(bleu) is float
    # the meters go into every checkpoint (extra_state/metrics): plain Python only, so weights_only loads
    torch.save(state, tmp_path / "meters.pt")
    torch.load(tmp_path / "meters.pt", weights_only=True)

    with metrics.aggregate(new_root=True) as aggregator:  # a young model: every hypothesis empty
        task.reduce_metrics([bleu_logging_output(["", ""], ["a b c", "d e f"])], criterion)
        assert aggregator.get_smoothed_values()["bleu"] == 0.0
    with metrics.aggregate(new_root=True) as aggregator:  # training steps carry no BLEU statistics
        task.reduce_metrics([{"loss": 1.0, "nll_loss": 1.0, "ntokens": 1, "nsentences": 1, "sample_size": 1}],
                            criterion)
        assert "bleu" not in aggregator.get_smoothed_values()


def test_evaluation_batches_keep_every_sentence_training_batches_keep_the_multiple():
    from fairseq.data import LanguagePairDataset
    task = make_task()
    dictionary = task.target_dictionary

    def pairs(count):
        tokens = [torch.tensor([4 + i % 30, 5, dictionary.eos()]) for i in range(count)]
        return LanguagePairDataset(tokens, [3] * count, dictionary, tokens, [3] * count, dictionary)

    def served(dataset, **batching):
        iterator = task.get_batch_iterator(dataset, required_batch_size_multiple=8, **batching)
        return sorted(i for batch in iterator.next_epoch_itr(shuffle=False) for i in batch["id"].tolist())

    valid = pairs(41)
    for batching in (dict(max_sentences=1), dict(max_sentences=3), dict(max_tokens=1000)):
        assert served(valid, **batching) == list(range(41)), batching
    task.datasets["train"] = train = pairs(41)
    assert served(train, max_sentences=16) == list(range(40))  # fairseq's multiple of 8, as before


# ---------------------------------------------------------------- architecture
def test_transformer_iwslt_fr_en_2x2_is_2x2_with_shared_embeddings_and_iwslt_sizes():
    from fairseq import options
    import fairseq_plugins.models.transformer_iwslt_fr_en_2x2  # noqa: F401  (fairseq skips an imported user-dir)

    def parse(*extra):
        return options.parse_args_and_arch(options.get_training_parser(), [
            "/nonexistent", "--user-dir", USER_DIR, "--task", "translation_encouraging", "--arch",
            "transformer_iwslt_fr_en_2x2", *extra])

    args = parse()
    assert (args.encoder_layers, args.decoder_layers) == (2, 2)
    assert args.share_all_embeddings is True
    assert (args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.encoder_attention_heads) == (512, 1024, 4)
    assert (args.decoder_embed_dim, args.decoder_ffn_embed_dim, args.decoder_attention_heads) == (512, 1024, 4)
    assert parse("--encoder-layers", "3").encoder_layers == 3


# ---------------------------------------------------------------- command line
def train_args(data, save_dir, *extra):
    return [data, "--user-dir", USER_DIR, *TINY_TRANSFORMER, "--optimizer", "adam", "--lr", "0.005",
            "--max-tokens", "1000", "--save-dir", save_dir, "--log-format", "json", "--log-interval", "1",
            "--no-epoch-checkpoints", "--seed", "1", *extra]


def json_records(output, tag):
    marker = f"| {tag} | "
    return [json.loads(line.split(marker, 1)[1]) for line in output.splitlines() if marker in line]


def test_schedule_flags_do_not_exist_without_the_task(toy_data_bin, tmp_path):
    proc = run_tool("fairseq-train", *train_args(toy_data_bin, tmp_path, "--task", "translation", "--criterion",
                                                 "encouraging_ls", "--bonus-schedule", "linear", "--max-update", "1"),
                    check=False)
    assert proc.returncode != 0
    assert "unrecognized arguments: --bonus-schedule linear" in proc.stderr


def test_a_schedule_with_another_criterion_fails_at_start_up(toy_data_bin, tmp_path):
    proc = run_tool("fairseq-train", *train_args(
        toy_data_bin, tmp_path, "--task", "translation_encouraging", "--criterion", "label_smoothed_cross_entropy",
        "--bonus-schedule", "linear", "--bonus-warmup-updates", "5", "--max-update", "1"), check=False)
    assert proc.returncode != 0
    assert "--criterion label_smoothed_cross_entropy has none: use --criterion encouraging_ls" in proc.stderr
    assert not list(tmp_path.glob("checkpoint*.pt"))


@pytest.mark.slow
def test_train_resume_generate_interactive(toy_data_bin, tmp_path):
    rho, start, warmup, interval = 0.8, 2, 6, 3
    schedule = BonusSchedule("cosine", warmup_updates=warmup, start_update=start)
    save_dir, tensorboard = tmp_path / "checkpoints", tmp_path / "tensorboard"
    common = ["--task", "translation_encouraging", "--criterion", "encouraging_ls", "--label-smoothing", "0.1",
              "--bonus-rho", str(rho), "--bonus-schedule", "cosine", "--bonus-warmup-updates", str(warmup),
              "--bonus-start-update", str(start), "--diagnostics-interval", str(interval),
              "--eval-bleu", "--eval-bleu-detok", "moses", "--eval-bleu-args", '{"beam": 1, "max_len_b": 12}',
              "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric",
              "--tensorboard-logdir", tensorboard]
    first = run_tool("fairseq-train", *train_args(toy_data_bin, save_dir, *common, "--max-update", "7"))
    second = run_tool("fairseq-train", *train_args(toy_data_bin, save_dir, *common, "--max-update", "14"))
    assert "Loaded checkpoint" in second.stdout and "@ 7 updates)" in second.stdout

    inner = json_records(first.stdout, "train_inner") + json_records(second.stdout, "train_inner")
    assert [int(r["num_updates"]) for r in inner] == list(range(1, 15)), "resume continues at update 8"
    for record in inner:
        n = int(record["num_updates"])
        assert float(record["bonus_weight"]) == pytest.approx(rho * schedule(n), abs=1e-4), f"update {n}"
        assert (record.get("p_target") is not None) == (n % interval == 0), f"diagnostics at update {n}"
    valid = json_records(first.stdout, "valid") + json_records(second.stdout, "valid")
    assert valid, "no validation ran"
    for record in valid:
        n = int(record["valid_num_updates"])
        assert float(record["valid_bonus_weight"]) == pytest.approx(rho * schedule(n), abs=1e-4)
        for name in ("p_target", "p_gt_half", "p_gt_le", "margin", "bleu"):
            assert record.get(f"valid_{name}") is not None, name
        assert 0.0 <= float(record["valid_bleu"]) <= 100.0
    assert float(valid[-1]["valid_best_bleu"]) == max(float(r["valid_bleu"]) for r in valid)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for subset, names in (("train_inner", {"bonus_weight", "p_target", "margin"}),
                          ("valid", {"bonus_weight", "p_target", "p_gt_le", "bleu"})):
        events = EventAccumulator(str(tensorboard / subset))
        events.Reload()
        assert names <= set(events.Tags()["scalars"]), subset

    # checkpoint_best.pt was picked by BLEU and holds no global beyond the args, which
    # fairseq_plugins.checkpoints allowlists: it loads under weights_only
    best = save_dir / "checkpoint_best.pt"
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(str(best))) <= {"argparse.Namespace"}
    state = torch.load(best, weights_only=True)
    assert state["extra_state"]["best"] == max(float(r["valid_bleu"]) for r in valid)
    assert type(state["extra_state"]["best"]) is float

    decode = ["--user-dir", USER_DIR, "--task", "translation_encouraging", "--path", best, "--beam", "2",
              "--source-lang", "src", "--target-lang", "tgt"]
    generated = run_tool("fairseq-generate", toy_data_bin, *decode, "--gen-subset", "test", "--batch-size", "3")
    sources = dict(line.split("\t", 1) for line in generated.stdout.splitlines() if line.startswith("S-"))
    hypotheses = {line.split("\t")[0][2:]: line.split("\t")[2] for line in generated.stdout.splitlines()
                  if line.startswith("H-")}
    assert len(hypotheses) == 40
    picked = sorted(hypotheses, key=int)[:3]
    queries = tmp_path / "queries.txt"
    queries.write_text("".join(sources[f"S-{i}"] + "\n" for i in picked))
    interactive = run_tool("fairseq-interactive", toy_data_bin, *decode, "--input", queries)
    answered = [line.split("\t")[2] for line in interactive.stdout.splitlines() if line.startswith("H-")]
    assert answered == [hypotheses[i] for i in picked]


# ---------------------------------------------------------------- SentencePiece BLEU during training
FR = {"cat": "chat", "dog": "chien", "house": "maison", "river": "rivière", "garden": "jardin", "apple": "pomme",
      "big": "grand", "small": "petit", "red": "rouge", "quiet": "calme", "happy": "heureux", "old": "vieux"}


def write_sentencepiece_corpus(root):
    """Raw cased English -> French pairs with punctuation, a tiny SentencePiece model, and the encoded corpus."""
    import sentencepiece as spm
    rng = random.Random(0)
    nouns, adjectives = ["cat", "dog", "house", "river", "garden", "apple"], ["big", "small", "red", "quiet",
                                                                              "happy", "old"]
    raw = {}
    for split, count in (("train", 800), ("valid", 24)):
        pairs = []
        for _ in range(count):
            a, n, b, m = rng.choice(adjectives), rng.choice(nouns), rng.choice(adjectives), rng.choice(nouns)
            pairs.append((f"The {a} {n} sees the {b} {m}.", f"Le {FR[n]} {FR[a]} voit le {FR[m]} {FR[b]}."))
        raw[split] = pairs
        for index, lang in enumerate(("en", "fr")):
            (root / f"{split}.raw.{lang}").write_text("".join(pair[index] + "\n" for pair in pairs))
    spm.SentencePieceTrainer.train(input=[str(root / "train.raw.en"), str(root / "train.raw.fr")],
                                   model_prefix=str(root / "sp"), vocab_size=100, hard_vocab_limit=False,
                                   character_coverage=1.0, minloglevel=2)
    processor = spm.SentencePieceProcessor(model_file=str(root / "sp.model"))
    for split in raw:
        for lang in ("en", "fr"):
            lines = (root / f"{split}.raw.{lang}").read_text().splitlines()
            (root / f"{split}.sp.{lang}").write_text(
                "".join(" ".join(processor.encode(line, out_type=str)) + "\n" for line in lines))
    return raw


@pytest.mark.slow
def test_eval_bleu_on_sentencepiece_data_reports_sacrebleu_and_picks_the_best(tmp_path):
    raw = write_sentencepiece_corpus(tmp_path)
    data = tmp_path / "bin"
    run_tool("fairseq-preprocess", "--source-lang", "en", "--target-lang", "fr", "--trainpref",
             tmp_path / "train.sp", "--validpref", tmp_path / "valid.sp", "--destdir", data,
             "--joined-dictionary", "--workers", "1")
    save_dir = tmp_path / "checkpoints"
    trained = run_tool("fairseq-train", *train_args(
        data, save_dir, "--task", "translation_encouraging", "--criterion", "encouraging_ls", "--label-smoothing",
        "0.1", "--share-all-embeddings", "--dropout", "0", "--lr", "0.01", "--max-tokens", "4000",
        "--max-update", "50", "--validate-interval", "1000", "--validate-interval-updates", "25",
        "--eval-bleu", "--eval-bleu-remove-bpe", "sentencepiece", "--eval-bleu-detok", "moses",
        "--eval-bleu-print-samples", "--eval-bleu-args", '{"beam": 1, "max_len_a": 1.2, "max_len_b": 5}',
        "--best-checkpoint-metric", "bleu", "--maximize-best-checkpoint-metric", "--log-interval", "10"))
    references = [line.split("example reference: ", 1)[1] for line in trained.stdout.splitlines()
                  if "example reference: " in line]
    assert references, "no validation sample printed"
    # SentencePiece was undone: the reference BLEU sees is exactly a raw, cased, punctuated sentence
    assert set(references) <= {target for _, target in raw["valid"]}
    valid = json_records(trained.stdout, "valid")
    assert len(valid) == 2
    bleus = [float(record["valid_bleu"]) for record in valid]
    assert bleus[-1] > 5.0, f"the toy task is learnable; BLEU {bleus}"
    state = torch.load(save_dir / "checkpoint_best.pt", weights_only=True)
    assert state["extra_state"]["best"] == max(bleus)
