#!/usr/bin/env python3
"""Fine-tunes a Hugging Face sequence-to-sequence model (Marian/OPUS-MT, NLLB, mBART, T5: a hub name or
a local directory) on a prepared corpus with label-smoothed CE (--baseline) or the encouraging loss,
then translates the test set and scores it with the project's scoring, into a run directory that
scripts/compare.py reads like a fairseq run.

  python -m scripts.hf_finetune --model Helsinki-NLP/opus-mt-de-en --data-dir data/iwslt14.de-en \\
      --run-dir runs/hf/el/seed1 --seed 1 [--baseline] [--label-smoothing 0.1] [--log-end 0.5] \\
      [--bonus-rho 1] [--bonus-schedule linear --bonus-warmup-updates 500] [--max-update 2000] ...

The corpus is data_prep's layout (docs/data.md): DATA/raw/{train,valid,test}.LANG and prepare.json;
the model reads the raw text through its own tokenizer. The encouraging loss's flags are the fairseq
criterion's and task's, so scripts/sweep.py runs arms of this script with --trainer hf. Both arms
use the same loss code: the baseline is the encouraging loss at rho = 0, which is fairseq's
label-smoothed CE (eps / (V - 1) on the other classes).

Writes RUN/run.json, RUN/train.log (the Trainer's logs as fairseq-style JSON lines), RUN/model (the
fine-tuned model and tokenizer), RUN/eval/SUBSET.{generate.txt,results.json,hyp.detok.TGT}; the
Trainer's checkpoints go to RUN/checkpoints and an interrupted run resumes from the last one.
TensorBoard logs: RUN/checkpoints/runs (--report-to tensorboard, the default).
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

from scripts.atomic_io import write_text_atomically
from scripts.score_translations import ScoringError, moses_tokenise, print_summary, score

# the fairseq flags of the encouraging loss -> EncouragingLossOptions / BonusSchedule fields
OPTION_FLAGS = {"log_end": "--log-end", "bonus_rho": "--bonus-rho", "bonus": "--bonus",
                "bonus_gamma": "--bonus-gamma", "el_label_smoothing": "--el-label-smoothing",
                "bonus_start": "--bonus-start"}
SCHEDULE_FLAGS = {"kind": "--bonus-schedule", "warmup_updates": "--bonus-warmup-updates",
                  "start_update": "--bonus-start-update"}


class FinetuneError(Exception):
    """Bad input: reported as one line naming the culprit."""


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--model", required=True, help="hub name or local directory (model and tokenizer)")
    parser.add_argument("--data-dir", required=True, help="a prepared corpus (data_prep's layout)")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--recipe", default="hf", help="a name for the run's records (default hf)")
    parser.add_argument("--src-lang", help="default: prepare.json's")
    parser.add_argument("--tgt-lang", help="default: prepare.json's")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", action="store_true", help="label-smoothed CE (the loss at rho = 0)")
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--log-end", type=float, default=0.5)
    parser.add_argument("--bonus-rho", type=float, default=1.0)
    parser.add_argument("--bonus", default="log")
    parser.add_argument("--bonus-gamma", type=float, default=1.0)
    parser.add_argument("--el-label-smoothing", type=float, default=None)
    parser.add_argument("--bonus-start", type=float, default=0.0)
    parser.add_argument("--bonus-schedule", default="constant")
    parser.add_argument("--bonus-warmup-updates", type=int, default=0)
    parser.add_argument("--bonus-start-update", type=int, default=0)
    parser.add_argument("--fuse-projection", action="store_true",
                        help="training steps never form the logits (the output layer fused into the loss)")
    parser.add_argument("--max-update", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--warmup-updates", type=int, default=0, help="learning-rate warm-up steps")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per device and micro-batch")
    parser.add_argument("--update-freq", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per side, longer ones truncated")
    parser.add_argument("--max-train-sentences", type=int, default=0, help="use the first N (0: all)")
    parser.add_argument("--save-updates", type=int, default=500, help="checkpoint every N steps")
    parser.add_argument("--log-updates", type=int, default=10, help="log every N steps")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--report-to", default="tensorboard", help="the Trainer's report_to (none, tensorboard, wandb)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return parser.parse_args(argv)


def corpus_languages(args):
    try:
        with open(os.path.join(args.data_dir, "prepare.json"), encoding="utf-8") as handle:
            settings = json.load(handle).get("settings", {})
    except FileNotFoundError:
        raise FinetuneError(f"--data-dir {args.data_dir}: no prepare.json; prepare the corpus with data_prep") from None
    except ValueError as error:
        raise FinetuneError(f"{args.data_dir}/prepare.json: not valid JSON ({error})") from None
    src, tgt = args.src_lang or settings.get("src"), args.tgt_lang or settings.get("tgt")
    if not src or not tgt:
        raise FinetuneError(f"{args.data_dir}/prepare.json names no languages: give --src-lang and --tgt-lang")
    return src, tgt


def read_split(args, split, src, tgt):
    sides = []
    for lang in (src, tgt):
        path = os.path.join(args.data_dir, "raw", f"{split}.{lang}")
        try:
            with open(path, encoding="utf-8") as handle:
                sides.append(handle.read().rstrip("\n").split("\n"))
        except OSError as error:
            raise FinetuneError(f"--data-dir: cannot read {path} ({error.strerror})") from None
    if len(sides[0]) != len(sides[1]):
        raise FinetuneError(f"{args.data_dir}/raw/{split}.{src} has {len(sides[0])} lines but "
                            f"{split}.{tgt} has {len(sides[1])}")
    return sides


def loss_function(args):
    """The run's EncouragingLossFunc; a flag out of range is a FinetuneError naming the flag."""
    from encouraging_loss import EncouragingLossOptions, OptionError
    from encouraging_loss.integrations.huggingface import EncouragingLossFunc
    from encouraging_loss.schedule import BonusSchedule
    try:
        options = EncouragingLossOptions(label_smoothing=args.label_smoothing,
                                         **{field: getattr(args, flag[2:].replace("-", "_"))
                                            for field, flag in OPTION_FLAGS.items()})
        if args.baseline:
            options = options.with_rho(0.0)
        schedule = BonusSchedule(**{field: getattr(args, flag[2:].replace("-", "_"))
                                    for field, flag in SCHEDULE_FLAGS.items()})
    except OptionError as error:
        flag = OPTION_FLAGS.get(error.field) or SCHEDULE_FLAGS.get(error.field) or f"--{error.field.replace('_', '-')}"
        raise FinetuneError(f"{flag} must be {error.requirement}, got {error.value!r}") from None
    return EncouragingLossFunc(options, schedule=None if args.baseline else schedule,
                               fuse_projection=args.fuse_projection)


def load(args):
    import transformers
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(args.model)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FinetuneError(f"--model {args.model}: cannot load a sequence-to-sequence model and tokenizer ({first})") from None
    return tokenizer, model


def encode(tokenizer, sources, targets, max_length):
    batch = tokenizer(sources, text_target=targets, max_length=max_length, truncation=True)
    return [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
             "labels": batch["labels"][i]} for i in range(len(sources))]


def write_train_log(path, log_history):
    """The Trainer's training logs as fairseq-style JSON lines (what scripts/compare.py plots):
    loss in bits per token like fairseq's, the diagnostics under the criterion's names."""
    lines = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        stats = {"num_updates": entry["step"], "loss": round(entry["loss"] / math.log(2), 4),
                 "lr": entry.get("learning_rate")}
        stats.update({key[3:]: entry[key] for key in entry if key.startswith("el_")})
        lines.append(f"hf_finetune | INFO | train_inner | {json.dumps(stats)}")
    lines.append("hf_finetune | INFO | done training")
    write_text_atomically(path, "\n".join(lines) + "\n")


def translate(model, tokenizer, sources, args):
    import torch
    from tqdm import tqdm
    model.eval()
    hypotheses = []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(sources), args.eval_batch_size), desc=f"translate {args.subset}",
                      unit="batch", file=sys.stderr):
        batch = tokenizer(sources[start:start + args.eval_batch_size], max_length=args.max_length, truncation=True,
                          padding=True, return_tensors="pt").to(device)
        with torch.no_grad():
            generated = model.generate(**batch, num_beams=args.beam, max_new_tokens=args.max_length)
        hypotheses += [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    return hypotheses


def evaluate(args, model, tokenizer, src, tgt, model_dir):
    """Translates the subset and scores it with scripts/score_translations (the fairseq runs' scoring)."""
    sources, references = read_split(args, args.subset, src, tgt)
    hypotheses = translate(model, tokenizer, sources, args)
    with open(os.path.join(args.data_dir, "prepare.json"), encoding="utf-8") as handle:
        reference_record = json.load(handle).get("references", {})
    tokenised_path = reference_record.get("tokenised")
    if tokenised_path and os.path.isfile(os.path.join(args.data_dir, tokenised_path)):
        with open(os.path.join(args.data_dir, tokenised_path), encoding="utf-8") as handle:
            references = handle.read().rstrip("\n").split("\n")
    if "moses-detokenise" in reference_record.get("postprocess", []):
        hypotheses = moses_tokenise(hypotheses, tgt)  # the scorer detokenises them again for sacreBLEU
    eval_dir = os.path.join(args.run_dir, "eval")
    os.makedirs(eval_dir, exist_ok=True)
    generate_path = os.path.join(eval_dir, f"{args.subset}.generate.txt")
    write_text_atomically(generate_path, "".join(
        f"S-{i}\t{source}\nT-{i}\t{reference}\nH-{i}\t0.0\t{hypothesis}\nD-{i}\t0.0\t{hypothesis}\n"
        for i, (source, reference, hypothesis) in enumerate(zip(sources, references, hypotheses))))
    results, detokenised = score(generate_path, args.data_dir, args.subset, tgt)
    results.update({"run_dir": args.run_dir, "recipe": args.recipe, "loss": "baseline" if args.baseline else "encouraging",
                    "seed": args.seed, "subset": args.subset, "beam": args.beam, "checkpoint": model_dir,
                    "model": args.model})
    write_text_atomically(os.path.join(eval_dir, f"{args.subset}.hyp.detok.{tgt}"),
                          "".join(line + "\n" for line in detokenised))
    results_path = os.path.join(eval_dir, f"{args.subset}.results.json")
    write_text_atomically(results_path, json.dumps(results, indent=2) + "\n")
    print_summary(results, results_path)


def train(args, src, tgt):
    import torch
    import transformers
    loss_func = loss_function(args)  # checks the loss's flags before anything slow
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    tokenizer, model = load(args)
    sources, targets = read_split(args, "train", src, tgt)
    if args.max_train_sentences:
        sources, targets = sources[:args.max_train_sentences], targets[:args.max_train_sentences]
    checkpoints = os.path.join(args.run_dir, "checkpoints")
    training_args = transformers.Seq2SeqTrainingArguments(
        output_dir=checkpoints, max_steps=args.max_update, learning_rate=args.lr, warmup_steps=args.warmup_updates,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.update_freq,
        logging_steps=args.log_updates, save_steps=args.save_updates, save_total_limit=1, seed=args.seed,
        report_to=[] if args.report_to == "none" else [args.report_to], fp16=args.precision == "fp16",
        bf16=args.precision == "bf16", use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
        label_smoothing_factor=0.0, dataloader_num_workers=0)
    trainer = transformers.Seq2SeqTrainer(
        model=model, args=training_args, train_dataset=encode(tokenizer, sources, targets, args.max_length),
        data_collator=transformers.DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer)
    loss_func.attach(trainer)
    last = transformers.trainer_utils.get_last_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None
    if last:
        print(f"[hf_finetune] resuming from {last}", file=sys.stderr)
    trainer.train(resume_from_checkpoint=last)
    model_dir = os.path.join(args.run_dir, "model")
    partial = model_dir + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    trainer.save_model(partial)  # with the tokenizer (processing_class); renamed once complete
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(partial, model_dir)
    write_train_log(os.path.join(args.run_dir, "train.log"), trainer.state.log_history)
    return model, tokenizer, model_dir


def main(argv=None):
    args = parse_args(argv)
    try:
        src, tgt = corpus_languages(args)
        for split in ("train", args.subset):
            read_split(args, split, src, tgt)
        for flag in ("max_update", "batch_size", "update_freq", "max_length", "beam", "eval_batch_size", "log_updates",
                     "save_updates"):
            if getattr(args, flag) < 1:
                raise FinetuneError(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
        os.makedirs(args.run_dir, exist_ok=True)
        started = time.time()
        model, tokenizer, model_dir = train(args, src, tgt)
        write_text_atomically(os.path.join(args.run_dir, "run.json"), json.dumps(
            {"trainer": "huggingface", "recipe": args.recipe, "loss": "baseline" if args.baseline else "encouraging",
             "seed": args.seed, "model": args.model, "data_dir": args.data_dir, "src_lang": src, "tgt_lang": tgt,
             "max_update": args.max_update, "train_seconds": round(time.time() - started, 1)}, indent=2) + "\n")
        evaluate(args, model, tokenizer, src, tgt, model_dir)
    except (FinetuneError, ScoringError) as error:
        print(f"error: hf_finetune: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
