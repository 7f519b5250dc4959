"""scripts/hf_finetune.py end to end, offline: a tiny random Marian model with a SentencePiece
tokenizer trained here, both arms through scripts/sweep.py (--trainer hf), scored and compared."""
import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, repo_env

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

from scripts.hf_finetune import main  # noqa: E402


def prepared_corpus(root):
    """The demo's synthetic pairs in data_prep's layout (raw/ and prepare.json), small."""
    subprocess.run([sys.executable, "-m", "scripts.make_demo_corpus", "--out-dir", str(root / "corpus"),
                    "--train-size", "200", "--valid-size", "8", "--test-size", "12"],
                   check=True, env=repo_env(), cwd=REPO, capture_output=True)
    data = root / "data"
    (data / "raw").mkdir(parents=True)
    for name in os.listdir(root / "corpus"):
        (data / "raw" / name).write_text((root / "corpus" / name).read_text())
    (data / "prepare.json").write_text(json.dumps({"settings": {"src": "src", "tgt": "tgt"},
                                                   "references": {"raw": "raw/test.tgt", "tokenised": None,
                                                                  "postprocess": []}}))
    return data


def tiny_local_model(root, data):
    """A MarianTokenizer over a SentencePiece model of the corpus and a randomly initialised tiny
    MarianMTModel, saved like a hub checkpoint."""
    spm_prefix = root / "spm"
    sentencepiece.SentencePieceTrainer.train(
        input=f"{data}/raw/train.src,{data}/raw/train.tgt", model_prefix=str(spm_prefix), vocab_size=150,
        model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
    processor = sentencepiece.SentencePieceProcessor(model_file=f"{spm_prefix}.model")
    pieces = [processor.id_to_piece(i) for i in range(1, processor.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1, **{piece: i + 2 for i, piece in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.MarianTokenizer(source_spm=f"{spm_prefix}.model", target_spm=f"{spm_prefix}.model",
                                             vocab=str(root / "vocab.json"))
    config = transformers.MarianConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        pad_token_id=vocab["<pad>"], eos_token_id=0, decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=0)
    model_dir = root / "tiny-marian"
    transformers.set_seed(0)
    transformers.MarianMTModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.mark.slow
def test_both_arms_train_translate_score_and_compare(tmp_path):
    data = prepared_corpus(tmp_path)
    model = tiny_local_model(tmp_path, data)
    runs = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.sweep", "--recipe", "hftoy", "--trainer", "hf", "--arms", "baseline",
         "rho=1,schedule=linear,warmup=4", "--seeds", "1", "--data-dir", str(data), "--runs-dir", str(runs),
         "--", "--model", str(model), "--max-update", "6", "--batch-size", "8", "--lr", "3e-3", "--beam", "2",
         "--max-length", "24", "--log-updates", "1", "--save-updates", "3", "--report-to", "none", "--threads", "1"],
        capture_output=True, text=True, env=repo_env(), cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    arms = {"baseline": runs / "hftoy" / "baseline" / "seed1",
            "el": runs / "hftoy" / "el_rho1_schedulelinear_warmup4" / "seed1"}
    references = (data / "raw" / "test.tgt").read_text().rstrip("\n").split("\n")
    import sacrebleu
    for name, run in arms.items():
        results = json.loads((run / "eval" / "test.results.json").read_text())
        hypotheses = (run / "eval" / "test.hyp.detok.tgt").read_text().rstrip("\n").split("\n")
        assert len(hypotheses) == len(references) == results["sentences"] == 12
        assert results["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score, abs=0.01)
        assert json.loads((run / "run.json").read_text())["loss"] == ("baseline" if name == "baseline" else "encouraging")
        assert (run / "model" / "config.json").is_file()
        # the schedule's weights reach train.log (fairseq-style lines): linear over updates 1..4, then rho
        weights = [json.loads(line[line.index("{"):])["bonus_weight"]
                   for line in (run / "train.log").read_text().splitlines() if "train_inner" in line]
        assert weights == pytest.approx([0.0] * 6 if name == "baseline" else [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    comparison = json.loads((runs / "hftoy" / "comparison.json").read_text())
    assert "el_rho1_schedulelinear_warmup4" in json.dumps(comparison) and "baseline" in json.dumps(comparison)
    assert (runs / "hftoy" / "comparison.md").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--log-end", "2"], "--log-end must be in (0, 1]"),
    (["--bonus-schedule", "steep"], "--bonus-schedule must be one of constant, linear, exp, cosine"),
    (["--max-update", "0"], "--max-update must be at least 1"),
])
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    data = prepared_corpus(tmp_path)
    code = main(["--model", str(tmp_path / "none"), "--data-dir", str(data), "--run-dir", str(tmp_path / "run"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_model_that_is_not_there_and_a_corpus_without_raw_text_are_named(tmp_path, capsys):
    data = prepared_corpus(tmp_path)
    code = main(["--model", str(tmp_path / "no-model"), "--data-dir", str(data), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and f"--model {tmp_path / 'no-model'}: cannot load" in err and err.count("\n") == 1, err
    (data / "raw" / "train.tgt").unlink()
    code = main(["--model", "x", "--data-dir", str(data), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "raw/train.tgt" in err and err.count("\n") == 1, err
