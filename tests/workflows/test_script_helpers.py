"""The Python helpers of the shell scripts, run as modules (python -m scripts.NAME): scoring
(score_translations), the atomic writer (atomic_io) and the run record (run_json)."""
import json
import random
import signal
import socket
import subprocess
import sys

import pytest
import sacrebleu

from helpers import REPO, repo_env


def run_module(name, *args, cwd=REPO, stdin=None, check=True):
    env = repo_env()
    proc = subprocess.run([sys.executable, "-m", f"scripts.{name}", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, input=stdin)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def write_generate_output(path, hypotheses, references, summary=""):
    """A fairseq-generate output in its own format (S-, T-, H- lines per sentence, shuffled order)."""
    order = list(range(len(hypotheses)))
    random.Random(0).shuffle(order)
    path.write_text("".join(f"S-{i}\tx\nT-{i}\t{references[i]}\nH-{i}\t-0.5\t{hypotheses[i]}\n" for i in order) + summary)


def fairseq_bleu(hypotheses, references):
    """fairseq-generate's own BLEU: its scorer on the lines encoded word by word, as generate.py does."""
    from fairseq.data import Dictionary
    from fairseq.scoring.bleu import BleuConfig, Scorer

    dictionary = Dictionary()
    scorer = Scorer(BleuConfig(pad=dictionary.pad(), eos=dictionary.eos(), unk=dictionary.unk()))
    for hypothesis, reference in zip(hypotheses, references):
        scorer.add(dictionary.encode_line(reference, add_if_not_exist=True),
                   dictionary.encode_line(hypothesis, add_if_not_exist=True))
    return scorer.score()


def scoring_inputs(tmp_path, references, postprocess=()):
    (tmp_path / "raw").mkdir(exist_ok=True)
    (tmp_path / "raw" / "test.en").write_text("".join(line + "\n" for line in references))
    (tmp_path / "prepare.json").write_text(json.dumps({"references": {"postprocess": list(postprocess)}}))


def test_tokenised_bleu_is_fairseqs_bleu(tmp_path):
    """score_translations' tokenised BLEU equals fairseq's BLEU scorer on the same H-/T- lines,
    including short hypotheses (brevity penalty) and a sentence with no 4-gram match."""
    rng = random.Random(1)
    words = [f"w{i}" for i in range(40)] + [",", ".", "&quot;"]
    references, hypotheses = [], []
    for _ in range(60):
        reference = [rng.choice(words) for _ in range(rng.randint(1, 25))]
        hypothesis = [w if rng.random() < 0.7 else rng.choice(words) for w in reference]
        del hypothesis[rng.randint(0, len(hypothesis)):][:rng.randint(0, 3)]  # sometimes shorter
        references.append(" ".join(reference))
        hypotheses.append(" ".join(hypothesis))
    generate = tmp_path / "generate.txt"
    write_generate_output(generate, hypotheses, references)
    scoring_inputs(tmp_path, references)
    run_module("score_translations", "--generate-output", generate, "--data-dir", tmp_path, "--tgt-lang", "en",
               "--output", tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    expected = fairseq_bleu(hypotheses, references)
    assert 5 < expected < 95
    assert results["tokenized_bleu"] == round(expected, 2)
    assert results["sentences"] == 60


def test_score_moses_detokenised_and_compound_split(tmp_path):
    """The WMT En-De path of score_translations on a handmade fairseq-generate output: Moses
    detokenisation before sacreBLEU, and compound splitting before tokenised BLEU."""
    hypotheses = ["Das ist ein Staats-Vertrag , sagte er .", "Die Ost-West-Beziehung ist gut ."]
    references = ["Das ist ein Staats-Vertrag , sagte sie .", "Die Ost-West-Beziehungen sind gut ."]
    raw = ["Das ist ein Staats-Vertrag, sagte sie.", "Die Ost-West-Beziehungen sind gut."]
    generate = tmp_path / "generate.txt"
    # fairseq's summary line is not read: the scores come from the H- and T- lines
    write_generate_output(generate, hypotheses, references, "Generate test with beam=4: BLEU4 = 12.34, 1/1/1/1\n")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "test.de").write_text("\n".join(raw) + "\n")
    (tmp_path / "prepare.json").write_text(json.dumps({"references": {"postprocess": ["moses-detokenise"]}}))
    output = tmp_path / "results.json"
    run_module("score_translations", "--generate-output", generate, "--data-dir", tmp_path, "--tgt-lang", "de",
               "--compound-split", "--output", output, "--hypotheses-output", tmp_path / "hyp.detok")
    results = json.loads(output.read_text())
    assert results["tokenized_bleu"] == round(fairseq_bleu(hypotheses, references), 2) != 12.34
    detokenised = (tmp_path / "hyp.detok").read_text().splitlines()
    assert detokenised == ["Das ist ein Staats-Vertrag, sagte er.", "Die Ost-West-Beziehung ist gut."]
    assert results["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(detokenised, [raw]).score, abs=0.01)
    # written out by hand: each "x-y" becomes "x ##AT##-##AT## y" (fairseq's compound_split_bleu.sh)
    hypotheses_split = ["Das ist ein Staats ##AT##-##AT## Vertrag , sagte er .",
                        "Die Ost ##AT##-##AT## West ##AT##-##AT## Beziehung ist gut ."]
    references_split = ["Das ist ein Staats ##AT##-##AT## Vertrag , sagte sie .",
                        "Die Ost ##AT##-##AT## West ##AT##-##AT## Beziehungen sind gut ."]
    expected = fairseq_bleu(hypotheses_split, references_split)
    assert expected != pytest.approx(fairseq_bleu(hypotheses, references), abs=0.5), "the example must be sensitive to the splitting"
    assert results["compound_split_bleu"] == round(expected, 2)
    # A corpus prepared without Moses (WMT14 here is SentencePiece on raw text): the scorer
    # Moses-tokenises both sides before splitting, and must land on the same tokenised strings.
    raw_hypotheses = ["Das ist ein Staats-Vertrag, sagte er.", "Die Ost-West-Beziehung ist gut."]
    write_generate_output(generate, raw_hypotheses, raw)
    (tmp_path / "prepare.json").write_text(json.dumps({"references": {"postprocess": []}}))
    run_module("score_translations", "--generate-output", generate, "--data-dir", tmp_path, "--tgt-lang", "de",
               "--compound-split", "--output", output)
    raw_results = json.loads(output.read_text())
    assert raw_results["compound_split_bleu"] == round(expected, 2)
    assert raw_results["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(raw_hypotheses, [raw]).score, abs=0.01)
    assert raw_results["tokenized_bleu"] == round(fairseq_bleu(raw_hypotheses, raw), 2)


def test_helpers_run_as_modules_from_any_directory(tmp_path):
    """No script relies on its own folder being on sys.path: each runs as scripts.NAME from elsewhere."""
    for name in ("score_translations", "run_json", "atomic_io"):
        proc = run_module(name, "--help", cwd=tmp_path, check=False)
        assert proc.returncode == 0 and "usage" in (proc.stdout + proc.stderr).lower(), (name, proc.stderr)
    run_module("run_json", "write", tmp_path / "r.json", "seed=3", "recipe=demo", "fp16=false", cwd=tmp_path)
    assert json.loads((tmp_path / "r.json").read_text()) == {"seed": 3, "recipe": "demo", "fp16": False}
    read = run_module("run_json", "read", tmp_path / "r.json", "recipe", "seed", "fp16", cwd=tmp_path)
    assert read.stdout.splitlines() == ["demo", "3", "false"]


# atomic_io

def partials(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_atomic_open_writes_text_bytes_plots_and_torch_checkpoints(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from scripts.atomic_io import atomic_open, write_bytes_atomically, write_text_atomically

    write_text_atomically(tmp_path / "sub" / "a.txt", "héllo\n")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    write_bytes_atomically(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    figure, axes = plt.subplots()
    axes.plot([0, 1], [1, 0])
    with atomic_open(tmp_path / "plot.png", "wb") as handle:
        figure.savefig(handle, format="png")
    plt.close(figure)
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    with atomic_open(tmp_path / "checkpoint.pt", "wb") as handle:
        torch.save(state, handle)
    torch.testing.assert_close(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["weight"], state["weight"])
    assert partials(tmp_path) == [] and partials(tmp_path / "sub") == []


def test_atomic_open_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from scripts.atomic_io import atomic_open

    target = tmp_path / "results.json"
    target.write_text("old complete content")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half of the new")
            raise RuntimeError("writer died")
    assert target.read_text() == "old complete content" and partials(tmp_path) == []


def test_a_killed_writers_leftover_is_removed_by_the_next_write(tmp_path):
    """A writer killed mid-write leaves .NAME.HOST.RANDOM.PID.partial; the next write of NAME removes it,
    but not the partial file of a writer that is still running (it holds the file's lock)."""
    target = tmp_path / "table.md"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom scripts.atomic_io import atomic_open\n"
        "with atomic_open(sys.argv[1]) as handle:\n    handle.write('half'); handle.flush(); print('ready', flush=True); time.sleep(60)\n"),
        str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        [leftover] = partials(tmp_path)
        assert leftover.startswith(f".table.md.{socket.gethostname()}.") and leftover.endswith(f".{writer.pid}.partial")
        run_module("atomic_io", target, stdin="while it runs\n")
        assert partials(tmp_path) == [leftover]  # a running writer's file is left alone
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert partials(tmp_path) == [leftover] and target.read_text() == "while it runs\n"
    run_module("atomic_io", target, stdin="next\n")
    assert partials(tmp_path) == [] and target.read_text() == "next\n"
