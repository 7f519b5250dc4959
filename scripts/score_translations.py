"""Scores a fairseq-generate output file and writes the results as JSON (atomically).

    python -m scripts.score_translations --generate-output F --data-dir D --tgt-lang L --output R.json

Reported, each labelled, all computed with sacreBLEU from the H- and T- lines:
  tokenized_bleu       BLEU on the subword-decoded text split at spaces, unsmoothed: what fairseq's own
                       scorer (--scoring bleu, the "BLEU4 =" line) computes. For IWSLT De-En
                       (Moses-tokenised, lower-cased) this is what the paper reports.
  sacrebleu            detokenised sacreBLEU against the untokenised references the data_prep step kept
                       (DATA/raw/SPLIT.TGT), with its signature. Hypotheses get the post-processing
                       DATA/prepare.json lists (Moses detokenisation; lower-cased comparison).
  compound_split_bleu  (with --compound-split) the WMT En-De convention: tokenised BLEU after splitting
                       hyphenated compounds ("a-b" -> "a ##AT##-##AT## b") in hypotheses and references
                       (Moses-tokenised first when the corpus was not).
"""
import argparse
import errno
import json
import os
import re
import sys

import sacrebleu

from scripts.atomic_io import write_text_atomically

COMPOUND = re.compile(r"(\S)-(\S)")


class ScoringError(Exception):
    """Bad input: reported as one line naming the file."""


def read_generate_output(path):
    """(hypotheses, references) in sentence-id order."""
    hypotheses, references = {}, {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line.startswith("H-"):
                sentence_id, _score, text = (line.split("\t", 2) + ["", ""])[:3]
                hypotheses[int(sentence_id[2:])] = text
            elif line.startswith("T-"):
                sentence_id, text = (line.split("\t", 1) + [""])[:2]
                references[int(sentence_id[2:])] = text
    if not hypotheses:
        raise ScoringError(f"{path}: no hypotheses (H- lines); is it fairseq-generate's output?")
    if sorted(hypotheses) != sorted(references):
        raise ScoringError(f"{path}: {len(hypotheses)} hypotheses but {len(references)} references (T- lines)")
    ids = sorted(hypotheses)
    if ids != list(range(len(ids))):
        raise ScoringError(f"{path}: sentence ids are not 0..{len(ids) - 1}; was the whole subset generated?")
    return [hypotheses[i] for i in ids], [references[i] for i in ids]


def bleu_metric(tokenized, lowercase=False):
    """The two BLEUs of the project. tokenized=True: BLEU on whitespace-split tokens, unsmoothed, which
    is fairseq's BLEU scorer (each line encoded word by word with Dictionary.encode_line, then 4-gram
    BLEU with the brevity penalty) on the same text; else sacreBLEU's default (13a) on detokenised text."""
    if tokenized:
        return sacrebleu.BLEU(tokenize="none", smooth_method="none", force=True)
    return sacrebleu.BLEU(lowercase=lowercase)


def tokenised_bleu(hypotheses, references):
    return round(bleu_metric(tokenized=True).corpus_score(hypotheses, [references]).score, 2)


def split_compounds(lines):
    # One pass, exactly like fairseq's compound_split_bleu.sh (perl s{(\S)-(\S)}{...}g).
    return [COMPOUND.sub(r"\1 ##AT##-##AT## \2", line) for line in lines]


def moses_tokenise(lines, lang):
    from sacremoses import MosesTokenizer
    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(line, escape=False, return_str=True) for line in lines]


def detokenise(lines, postprocess, lang):
    if "moses-detokenise" in postprocess:
        from sacremoses import MosesDetokenizer
        detokenizer = MosesDetokenizer(lang=lang)
        return [detokenizer.detokenize(line.split()) for line in lines]
    return lines


def read_postprocess(path):
    """The reference post-processing steps that data_prep recorded in prepare.json."""
    with open(path, encoding="utf-8") as handle:
        try:
            record = json.load(handle)
        except ValueError as error:
            raise ScoringError(f"{path}: not valid JSON ({error})") from None
    references = record.get("references", {}) if isinstance(record, dict) else None
    postprocess = references.get("postprocess", []) if isinstance(references, dict) else None
    if not isinstance(postprocess, list) or not all(isinstance(step, str) for step in postprocess):
        raise ScoringError(f"{path}: expected an object whose references.postprocess is a list of names "
                           "(it is written by data_prep; prepare the corpus again)")
    return postprocess


def score(generate_output, data_dir, subset, tgt_lang, compound_split=False):
    hypotheses, tokenised_refs = read_generate_output(generate_output)
    postprocess = read_postprocess(os.path.join(data_dir, "prepare.json"))
    raw_path = os.path.join(data_dir, "raw", f"{subset}.{tgt_lang}")
    if not os.path.isfile(raw_path):
        raise ScoringError(f"missing untokenised references {raw_path} (made by data_prep)")
    with open(raw_path, encoding="utf-8") as handle:
        raw_refs = handle.read().split("\n")
    if raw_refs and raw_refs[-1] == "":
        raw_refs.pop()
    if len(raw_refs) != len(hypotheses):
        raise ScoringError(f"{raw_path} has {len(raw_refs)} lines but {generate_output} has "
                           f"{len(hypotheses)} hypotheses")
    detokenised = detokenise(hypotheses, postprocess, tgt_lang)
    metric = bleu_metric(tokenized=False, lowercase="compare-lowercased" in postprocess)
    sacre = metric.corpus_score(detokenised, [raw_refs])
    results = {
        "tokenized_bleu": tokenised_bleu(hypotheses, tokenised_refs),
        "sacrebleu": round(sacre.score, 2),
        "sacrebleu_signature": str(metric.get_signature()),
        "compound_split_bleu": None,
        "sentences": len(hypotheses),
        "postprocess": postprocess,
    }
    if compound_split:
        if "moses-detokenise" not in postprocess:
            # the corpus was not Moses-tokenised (e.g. SentencePiece on raw WMT text): tokenise both
            # sides first, since the convention is BLEU on tokenised text
            hypotheses, tokenised_refs = moses_tokenise(hypotheses, tgt_lang), moses_tokenise(tokenised_refs, tgt_lang)
        results["compound_split_bleu"] = tokenised_bleu(split_compounds(hypotheses), split_compounds(tokenised_refs))
    return results, detokenised


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--generate-output", required=True, help="fairseq-generate's stdout")
    parser.add_argument("--data-dir", required=True, help="data_prep output directory (prepare.json, raw/)")
    parser.add_argument("--subset", default="test")
    parser.add_argument("--tgt-lang", required=True)
    parser.add_argument("--compound-split", action="store_true", help="also compound-split BLEU (WMT En-De)")
    parser.add_argument("--output", required=True, help="results JSON")
    parser.add_argument("--hypotheses-output", help="also write the detokenised hypotheses here")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more fields for the JSON (e.g. checkpoint=..., beam=5)")
    parser.add_argument("--print-summary", action="store_true",
                        help="print the scores, labelled (scripts/evaluate.sh)")
    args = parser.parse_args(argv)
    try:
        results, detokenised = score(args.generate_output, args.data_dir, args.subset, args.tgt_lang,
                                     args.compound_split)
    except (ScoringError, OSError, ValueError) as error:
        print(f"error: score_translations: {error}", file=sys.stderr)
        return 2
    for pair in args.extra:
        key, _, value = pair.partition("=")
        results[key] = value
    outputs = [(args.hypotheses_output, "".join(line + "\n" for line in detokenised)),
               (args.output, json.dumps(results, indent=2) + "\n")]
    for path, text in outputs:
        if path is None:
            continue
        try:
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "a directory is in the way")
            write_text_atomically(path, text)
        except OSError as error:
            print(f"error: score_translations: cannot write {path}: {error.strerror or error}", file=sys.stderr)
            return 2
    if args.print_summary:
        print_summary(results, args.output)
    return 0


def print_summary(results, path):
    get = results.get
    print(f"[evaluate] {get('run_dir', '')} ({get('recipe')}, {get('loss')}, seed {get('seed')}), {get('subset')}: "
          f"{results['sentences']} sentences, beam {get('beam')}, {get('checkpoint')}")
    print(f"  tokenised BLEU (fairseq's scorer; the paper's metric for IWSLT): {results['tokenized_bleu']}")
    print(f"  detokenised sacreBLEU: {results['sacrebleu']}  ({results['sacrebleu_signature']})")
    if results["compound_split_bleu"] is not None:
        print(f"  compound-split BLEU (WMT En-De convention): {results['compound_split_bleu']}")
    print(f"  results: {path}")


if __name__ == "__main__":
    sys.exit(main())
