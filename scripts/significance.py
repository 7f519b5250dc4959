"""Paired bootstrap resampling between two systems on the same references, with sacreBLEU's own test
(sacrebleu.significance.PairedTest, test_type "bs": the Moses bootstrap-hypothesis-difference-significance
procedure) and a 95% confidence interval of the BLEU difference from the same resamples.

The interval: sacreBLEU's resampler (``_bootstrap_resample``) draws its sentence indices from a
generator seeded by SACREBLEU_SEED (default 12345), the same seed and draw PairedTest uses, so
resampling each system's sufficient statistics with it pairs resample i of one system with resample
i of the other; the interval is the 2.5th..97.5th percentile of the paired differences, taken the
way sacreBLEU's estimate_ci takes its bounds.

Ties: sacreBLEU's p-value counts resampled statistics strictly above the observed one ("a zero
difference should not be attributed to chance"), so two systems with the same score and no spread
over the resamples (identical outputs, or different outputs that both score BLEU 0) would get its
smallest p, 1/(n+1), and read as significant. A tie favours neither system: the result reports
p = 1 for it, and says whether the outputs are identical.
"""
import numpy as np
from sacrebleu.significance import PairedTest, _bootstrap_resample

N_SAMPLES = 1000
LEVEL = 0.05


def paired_differences(hypotheses_a, hypotheses_b, references, metric, n_samples=N_SAMPLES):
    """BLEU(B) - BLEU(A) on each of sacreBLEU's bootstrap resamples, both systems on the same resample."""
    resampled = []
    for hypotheses in (hypotheses_a, hypotheses_b):
        stats = metric._extract_corpus_statistics(list(hypotheses), [list(references)])
        resampled.append(np.array([score.score for score in _bootstrap_resample(stats, metric, n_samples)[1]]))
    return resampled[1] - resampled[0]


def paired_bootstrap(hypotheses_a, hypotheses_b, references, metric, n_samples=N_SAMPLES):
    """B against A on the same references: {bleu_a, bleu_b, delta (B - A), p_value, ci_low, ci_high, ...}."""
    if not (len(hypotheses_a) == len(hypotheses_b) == len(references)):
        raise ValueError(f"paired test needs equal lengths: {len(hypotheses_a)} and {len(hypotheses_b)} "
                         f"hypotheses, {len(references)} references")
    if not references:
        raise ValueError("paired test on an empty test set")
    signatures, scores = PairedTest([("A", list(hypotheses_a)), ("B", list(hypotheses_b))], {"BLEU": metric},
                                    [list(references)], test_type="bs", n_samples=n_samples)()
    (name, [result_a, result_b]), = [(key, value) for key, value in scores.items() if key != "System"]
    identical = list(hypotheses_a) == list(hypotheses_b)
    tie = identical or result_a.score == result_b.score
    differences = np.sort(paired_differences(hypotheses_a, hypotheses_b, references, metric, n_samples))
    lower = len(differences) // 40  # estimate_ci's 95% bounds
    p_value = 1.0 if tie else float(result_b.p_value)
    return {
        "bleu_a": round(result_a.score, 2), "bleu_b": round(result_b.score, 2),
        "delta": round(result_b.score - result_a.score, 2),
        "p_value": round(p_value, 4),
        "ci_low": round(float(differences[lower]), 2), "ci_high": round(float(differences[-lower - 1]), 2),
        "significant": bool(p_value < LEVEL),
        "identical": identical, "tie": tie,
        "sentences": len(references), "n_samples": n_samples,
        "signature": str(signatures[name]),
    }


def in_words(name_a, name_b, result):
    """One sentence: which arm is better, by how much, and whether that is significant at p < 0.05."""
    if result["identical"]:
        return f"{name_b} and {name_a} produce identical translations"
    if result.get("tie"):
        return f"{name_b} and {name_a} score the same, {result['bleu_a']:.2f} BLEU: a tie, not significant"
    ci = f"95% CI of the difference [{result['ci_low']:+.2f}, {result['ci_high']:+.2f}]"
    verdict = (f"significant at p < {LEVEL}" if result["significant"] else f"not significant at p < {LEVEL}")
    if result["significant"] and result["ci_low"] <= 0 <= result["ci_high"]:
        # sacreBLEU's p-value and the percentile interval are built differently and can disagree at the edge
        verdict += ", borderline: the interval includes 0"
    return (f"{name_b} - {name_a} = {result['delta']:+.2f} BLEU, p = {result['p_value']:.3f}: {verdict} ({ci})")
