"""The comparison plot of scripts/compare.py: one figure over all arms, one colour per arm: test BLEU per
seed with the arm's mean +- std, the validation curves and the target-probability diagnostics that
the encouraging_ls criterion logs (p_target, p_gt_half, margin)."""
import statistics

from scripts.atomic_io import atomic_open

PANELS = [
    ("valid", "valid_nll_loss", "valid_num_updates", "validation NLL (bits/token)"),
    ("valid", "valid_p_target", "valid_num_updates", "validation mean p(target)"),
    ("valid", "valid_p_gt_half", "valid_num_updates", "validation share of tokens with p(target) > 0.5"),
    ("valid", "valid_margin", "valid_num_updates", "validation mean margin (target - best other logit)"),
    ("train_inner", "p_target", "num_updates", "training mean p(target)"),
]


def curve(records, tag, key, step_key):
    """(steps, values) of `key` over `step_key` in the records of one tag, skipping missing values."""
    steps, values = [], []
    for stats in records.get(tag, []):
        if key in stats and step_key in stats:
            try:
                step, value = float(stats[step_key]), float(stats[key])
            except (TypeError, ValueError):
                continue
            steps.append(step)
            values.append(value)
    return steps, values


def plot(runs, arms, path, recipe, metric, metric_labels):
    """Draws the figure (``figure``) and writes it to ``path`` as PNG, atomically."""
    import matplotlib.pyplot as plt

    fig = figure(runs, arms, recipe, metric, metric_labels)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=90)
    plt.close(fig)


def figure(runs, arms, recipe, metric, metric_labels):
    """The comparison figure: panel 0 the test metric per seed (one x position per arm, in ``arms``
    order) with mean +- std, then one panel per entry of PANELS with one line per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {arm: plt.get_cmap("tab10")(index % 10) for index, arm in enumerate(arms)}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    bleu_axis = axes.flat[0]
    for index, arm in enumerate(arms):
        values = [r["results"].get(metric) for r in runs if r["arm"] == arm and r["results"].get(metric) is not None]
        if values:
            bleu_axis.scatter([index] * len(values), values, color=colours[arm], alpha=0.7, s=18)
            mean = statistics.fmean(values)
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            bleu_axis.errorbar([index + 0.15], [mean], yerr=[spread], color=colours[arm], fmt="D", capsize=4)
    bleu_axis.set_xticks(range(len(arms)))
    bleu_axis.set_xticklabels(arms, rotation=30, ha="right", fontsize=8)
    bleu_axis.set_title(f"test {metric_labels.get(metric, metric)}: seeds (dots), mean +- std", fontsize=10)
    bleu_axis.grid(alpha=0.3)
    for axis, (tag, key, step_key, title) in zip(axes.flat[1:], PANELS):
        for arm in arms:
            labelled = False
            for run in runs:
                if run["arm"] != arm:
                    continue
                steps, values = curve(run["log"], tag, key, step_key)
                if steps:
                    axis.plot(steps, values, color=colours[arm], alpha=0.7, marker="." if len(steps) < 30 else None,
                              label=None if labelled else arm)
                    labelled = True
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("updates")
        axis.grid(alpha=0.3)
    handles, labels = axes.flat[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle(f"{recipe}: {len(arms)} arms (one line per seed)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig
