"""The paired significance test (scripts/significance.py, sacreBLEU's paired bootstrap) on synthetic
systems whose answer is known, and its confidence interval against resamples scored here."""
import random
import sys

import numpy as np
import pytest
import sacrebleu

from helpers import REPO

from scripts.score_translations import bleu_metric
from scripts.significance import in_words, paired_bootstrap, paired_differences

WORDS = [f"w{i}" for i in range(60)]


def corpus(seed=0, sentences=300):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(sentences)]


def noisy(references, keep, seed):
    """Each reference word kept with probability `keep`, else replaced by a random word."""
    rng = random.Random(seed)
    return [" ".join(w if rng.random() < keep else rng.choice(WORDS) for w in line.split()) for line in references]


def test_identical_systems_are_not_different():
    references = corpus()
    system = noisy(references, 0.7, seed=1)
    result = paired_bootstrap(system, list(system), references, bleu_metric(tokenized=True), n_samples=300)
    assert result["identical"] and result["p_value"] == 1.0 and not result["significant"]
    assert result["delta"] == 0 and result["ci_low"] == 0 and result["ci_high"] == 0
    assert "identical" in in_words("A", "B", result)


def test_a_tie_between_different_outputs_is_never_significant():
    """Two different systems that both score BLEU 0 (no 4-gram matches) have no spread over the
    resamples; sacreBLEU's count of resamples strictly above the observed difference gives them p =
    1/(n+1), which read "significant" before."""
    references = corpus()
    vocabulary_a, vocabulary_b = ["x1", "x2", "x3"], ["y1", "y2"]
    a = [" ".join(vocabulary_a[(i + j) % 3] for j in range(8)) for i in range(len(references))]
    b = [" ".join(vocabulary_b[(i + j) % 2] for j in range(9)) for i in range(len(references))]
    metric = bleu_metric(tokenized=True)
    assert metric.corpus_score(a, [references]).score == metric.corpus_score(b, [references]).score == 0.0
    result = paired_bootstrap(a, b, references, metric, n_samples=300)
    assert not result["identical"] and result["tie"]
    assert result["p_value"] == 1.0 and not result["significant"]
    assert "a tie, not significant" in in_words("A", "B", result)


def test_the_interval_is_the_central_95_percent_of_the_paired_differences():
    """2.5% of the resampled differences lie below the interval and 2.5% above it (a 90% interval
    would leave 5% on each side)."""
    references = corpus()
    a, b = noisy(references, 0.6, seed=5), noisy(references, 0.65, seed=6)
    metric = bleu_metric(tokenized=True)
    n = 800
    result = paired_bootstrap(a, b, references, metric, n_samples=n)
    differences = paired_differences(a, b, references, metric, n_samples=n)
    tail = 0.025 * n
    below, above = (differences < result["ci_low"] - 0.005).sum(), (differences > result["ci_high"] + 0.005).sum()
    assert below <= tail and above <= tail, (below, above)
    # and no narrower: the bounds sit at the 2.5th and 97.5th percentiles, not inside them
    assert (differences <= result["ci_low"] + 0.005).sum() >= tail - 1
    assert (differences >= result["ci_high"] - 0.005).sum() >= tail - 1


def test_systems_of_equal_quality_are_not_significant():
    references = corpus()
    a, b = noisy(references, 0.7, seed=1), noisy(references, 0.7, seed=2)
    result = paired_bootstrap(a, b, references, bleu_metric(tokenized=True), n_samples=500)
    assert not result["identical"] and result["p_value"] > 0.05 and not result["significant"]
    assert result["ci_low"] < 0 < result["ci_high"]
    assert "not significant at p < 0.05" in in_words("A", "B", result)


def test_a_much_better_system_is_significant_with_the_difference_inside_its_interval():
    references = corpus()
    worse, better = noisy(references, 0.4, seed=1), noisy(references, 0.8, seed=2)
    metric = bleu_metric(tokenized=True)
    result = paired_bootstrap(worse, better, references, metric, n_samples=500)
    expected = metric.corpus_score(better, [references]).score - metric.corpus_score(worse, [references]).score
    assert result["delta"] == pytest.approx(expected, abs=0.01) and expected > 20
    assert result["p_value"] <= 2 / 501 and result["significant"]
    assert 0 < result["ci_low"] < expected < result["ci_high"]
    assert "significant at p < 0.05" in in_words("A", "B", result) and "not" not in in_words("A", "B", result)


def test_differences_pair_the_same_resampled_sentences():
    """Resample i of both systems must use the same sentences: rebuild resample i here from sacreBLEU's
    documented seed (SACREBLEU_SEED, default 12345) and score it with corpus_score."""
    references = corpus(sentences=80)
    a, b = noisy(references, 0.5, seed=3), noisy(references, 0.7, seed=4)
    metric = bleu_metric(tokenized=True)
    differences = paired_differences(a, b, references, metric, n_samples=20)
    indices = np.random.default_rng(12345).choice(len(references), size=(20, len(references)), replace=True)
    for i in (0, 7, 19):
        pick = lambda lines: [lines[j] for j in indices[i]]  # noqa: E731
        scorer = sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)
        expected = (scorer.corpus_score(pick(b), [pick(references)]).score
                    - scorer.corpus_score(pick(a), [pick(references)]).score)
        assert differences[i] == pytest.approx(expected, abs=1e-3)


def test_in_words_flags_a_p_value_the_interval_does_not_support():
    base = {"identical": False, "delta": 0.75, "p_value": 0.036, "significant": True, "ci_low": -0.01, "ci_high": 1.57}
    assert in_words("A", "B", base) == ("B - A = +0.75 BLEU, p = 0.036: significant at p < 0.05, borderline: the "
                                        "interval includes 0 (95% CI of the difference [-0.01, +1.57])")
    clear = dict(base, ci_low=0.2)
    assert "borderline" not in in_words("A", "B", clear) and "significant at p < 0.05 (95% CI" in in_words("A", "B", clear)


def test_unequal_lengths_are_refused():
    references = corpus(sentences=10)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap(references, references[:-1], references, bleu_metric(tokenized=True))


def fake_run(root, arm, seed, hypotheses, references, bleu):
    """A run directory as train.sh + evaluate.sh (+ sweep.py's arm.json) leave it, with given translations."""
    import json
    run = root / arm / f"seed{seed}"
    (run / "eval").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"loss": "baseline" if arm == "baseline" else "encouraging",
                                              "seed": seed, "tgt_lang": "tgt"}))
    (run / "arm.json").write_text(json.dumps({"arm": arm, "settings": {} if arm == "baseline" else {"le": arm[5:]}}))
    (run / "eval" / "test.results.json").write_text(json.dumps(
        {"tokenized_bleu": bleu, "sacrebleu": bleu, "compound_split_bleu": None, "postprocess": []}))
    generate = [f"S-{i}\tx\nT-{i}\t{ref}\nH-{i}\t-0.1\t{hyp}\n" for i, (hyp, ref) in enumerate(zip(hypotheses, references))]
    (run / "eval" / "test.generate.txt").write_text("".join(generate) + "Generate test with beam=5: BLEU4 = 1.0\n")
    return str(run)


def test_compare_reports_every_pair_per_seed_and_pooled(tmp_path):
    """Three arms x two seeds through compare.py: the pooled test equals the test on the seeds'
    translations concatenated here, the per-seed tests equal the tests on each seed."""
    import json
    import subprocess
    references = corpus(sentences=120)
    keep = {"baseline": 0.6, "el_le0.75": 0.6, "el_le1.0": 0.9}
    runs, systems = [], {}
    for arm, quality in keep.items():
        for seed in (1, 2):
            systems[arm, seed] = noisy(references, quality, seed=10 * list(keep).index(arm) + seed)
            runs.append(fake_run(tmp_path, arm, seed, systems[arm, seed], references, 10.0 * seed + quality))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "scripts.compare", "--recipe", "toy", "--runs", *runs,
                           "--out-dir", str(out), "--bootstrap-samples", "200"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["arms"] == list(keep)
    tests = {(t["arm_a"], t["arm_b"]): t for t in summary["significance"]}
    assert set(tests) == {("baseline", "el_le0.75"), ("baseline", "el_le1.0"), ("el_le0.75", "el_le1.0")}
    metric = bleu_metric(tokenized=True)
    for (arm_a, arm_b), test in tests.items():
        pooled = paired_bootstrap(systems[arm_a, 1] + systems[arm_a, 2], systems[arm_b, 1] + systems[arm_b, 2],
                                  references * 2, metric, n_samples=200)
        assert test["pooled"] == pooled and test["seeds"] == [1, 2]
        for seed in (1, 2):
            assert test["per_seed"][str(seed)] == paired_bootstrap(systems[arm_a, seed], systems[arm_b, seed],
                                                                   references, metric, n_samples=200)
    assert tests["baseline", "el_le1.0"]["pooled"]["significant"]
    assert not tests["baseline", "el_le0.75"]["pooled"]["significant"]
    table = (out / "comparison.md").read_text()
    assert "not significant at p < 0.05" in table and "el_le1.0 - baseline = +" in table
    png = (out / "comparison.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_compare_refuses_pairs_evaluated_on_different_references(tmp_path):
    import subprocess
    references = corpus(sentences=20)
    runs = [fake_run(tmp_path, "baseline", 1, references, references, 1.0),
            fake_run(tmp_path, "el_le0.75", 1, references, list(reversed(references)), 1.0)]
    proc = subprocess.run([sys.executable, "-m", "scripts.compare", "--recipe", "toy", "--runs", *runs,
                           "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: compare.py:") and "different references" in proc.stderr


def test_comparison_plot_shows_each_seeds_score_and_each_runs_curves():
    """The plot's data, read back from the figure: every seed's score at its arm's position with the
    arm's mean +- std, and every run's logged validation curve in the panels."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    from scripts.compare_plot import PANELS, figure

    def log(offset):
        return {"valid": [{"valid_num_updates": str(n), "valid_nll_loss": str(3.0 - n / 100 + offset),
                           "valid_p_target": "0.5", "valid_p_gt_half": "0.4", "valid_margin": "1.0"}
                          for n in (10, 20, 30)],
                "train_inner": [{"num_updates": "5", "p_target": "0.3"}]}

    runs = [{"arm": "baseline", "results": {"bleu": 30.0}, "log": log(0.0)},
            {"arm": "baseline", "results": {"bleu": 32.0}, "log": log(0.1)},
            {"arm": "el_le0.75", "results": {"bleu": 35.0}, "log": log(0.2)}]
    fig = figure(runs, ["baseline", "el_le0.75"], "toy", "bleu", {"bleu": "BLEU"})
    try:
        scores = fig.axes[0]
        dots = sorted(tuple(map(float, point)) for collection in scores.collections
                      if isinstance(collection, PathCollection) for point in collection.get_offsets())
        assert dots == [(0.0, 30.0), (0.0, 32.0), (1.0, 35.0)]
        means = sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in scores.lines if line.get_marker() == "D")
        assert means == [(pytest.approx(0.15), pytest.approx(31.0)), (pytest.approx(1.15), pytest.approx(35.0))]
        assert PANELS[0][1] == "valid_nll_loss"
        curves = sorted(list(line.get_ydata()) for line in fig.axes[1].lines)
        assert curves == [pytest.approx([3.0 - n / 100 + offset for n in (10, 20, 30)]) for offset in (0.0, 0.1, 0.2)]
    finally:
        plt.close(fig)
