"""The two tools a build runs: SentencePiece (in-process: training and encoding) and fairseq-preprocess
(a child process tied to this one, see processes.py). Their failures that a user can fix become one
DataPrepError line naming the cause and the fix."""
import io
import logging
import re
import sys
from pathlib import Path

from tqdm import tqdm

from data_prep.processes import run_tied
from data_prep.textfiles import DataPrepError, write_bytes, write_lines

LOG = logging.getLogger("data_prep")
SPLITS = ("train", "valid", "test")
# SentencePiece's check that every required character gets a piece, as it words the failure.
_TOO_FEW_PIECES = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_sentencepiece(text_files, prefix: Path, settings, log_path: Path, sentences: int):
    """Trains on `text_files` (`sentences` lines in all) and writes PREFIX.model and PREFIX.vocab from
    Python, so that a failed write (disk full, ...) is an OSError naming the file (SentencePiece's own
    writer would leave a truncated model behind without a word)."""
    import sentencepiece as spm
    LOG.info("training SentencePiece %s, vocab %d, on %s", settings.model_type, settings.vocab_size,
             ", ".join(str(path) for path in text_files))
    spm.set_random_generator_seed(settings.seed)
    model = io.BytesIO()
    try:
        with open(log_path, "w") as log:
            spm.SentencePieceTrainer.train(
                input=[str(path) for path in text_files], model_writer=model,
                vocab_size=settings.vocab_size, model_type=settings.model_type,
                character_coverage=settings.character_coverage,
                # 0 is all of them: a larger number (up to any size) means all too.
                input_sentence_size=0 if settings.spm_sentences >= sentences else settings.spm_sentences,
                shuffle_input_sentence=True,
                # Small corpora cannot fill a large vocabulary; take what they support instead of failing.
                hard_vocab_limit=False,
                num_threads=settings.workers, logstream=log)
    except RuntimeError as error:
        too_few = _TOO_FEW_PIECES.search(str(error))
        if too_few:
            raise DataPrepError(
                f"--vocab-size {settings.vocab_size} is too small for this training text: SentencePiece needs "
                f"at least {too_few.group(2)} (one piece per character); raise --vocab-size or lower "
                "--character-coverage") from None
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise DataPrepError(f"SentencePiece training failed: {reason}") from None
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    write_bytes(Path(f"{prefix}.model"), model.getvalue())
    # The layout of SentencePiece's own .vocab file: piece, tab, score (printf %g).
    write_lines(Path(f"{prefix}.vocab"), (f"{processor.id_to_piece(piece_id)}\t{processor.get_score(piece_id):g}"
                                          for piece_id in range(processor.get_piece_size())))
    built = processor.get_piece_size()
    if built != settings.vocab_size:
        LOG.warning("--vocab-size %d: this training text supports %d pieces only; built a vocabulary of %d",
                    settings.vocab_size, built, built)
    return processor


def encode_lines(processor, lines: list, workers: int, desc: str) -> list:
    pieces, chunk = [], 10000
    with tqdm(total=len(lines), desc=desc, unit="line", mininterval=2) as progress:
        for start in range(0, len(lines), chunk):
            batch = lines[start:start + chunk]
            pieces.extend(" ".join(sentence) for sentence in
                          processor.encode(batch, out_type=str, num_threads=workers))
            progress.update(len(batch))
    return pieces


def run_fairseq_preprocess(pieces_dir: Path, bin_dir: Path, settings, log_path: Path) -> list:
    command = [sys.executable, "-m", "fairseq_cli.preprocess",
               "--source-lang", settings.src, "--target-lang", settings.tgt,
               *[arg for split in SPLITS for arg in (f"--{split}pref", str(pieces_dir / split))],
               "--destdir", str(bin_dir), "--joined-dictionary", "--workers", str(settings.workers)]
    LOG.info("running %s", " ".join(command))
    status = run_tied(command, log_path)
    if status != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        # The log goes with the temporary directory; its last line usually names the problem.
        raise DataPrepError(f"fairseq-preprocess failed ({status}): {tail[0]}")
    return command
