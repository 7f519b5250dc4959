"""What the IWSLT recipes share: the TED talk archives' layout (train.tags.* files with metadata lines,
dev/test sets as .xml files with <seg> lines) and the recipe of fairseq's IWSLT scripts."""
import dataclasses
import re
from pathlib import Path

from data_prep.archives import read_archive_members
from data_prep.build import build_dataset
from data_prep.recipes.common import start
from data_prep.registry import archives, iwslt_members
from data_prep.text import ParallelText, add_model_text, clean_by_length, every_nth, pair_lines, text_steps

_SEG = re.compile(r'<seg id="[0-9]*">\s*(.*?)\s*</seg>')


def iwslt_train_lines(lines, drop_containing) -> list:
    """The talks' text in a train.tags file: metadata lines dropped, <title>/<description> tags
    stripped (their text is kept as a sentence, as in fairseq's recipes)."""
    kept = []
    for line in lines:
        if any(marker in line for marker in drop_containing):
            continue
        for tag in ("title", "description"):
            line = line.replace(f"<{tag}>", "").replace(f"</{tag}>", "")
        kept.append(line.strip())
    return kept


def iwslt_xml_lines(lines) -> list:
    """The <seg id="N"> contents of an IWSLT dev/test .xml file, in file order."""
    return [_SEG.sub(r"\1", line).strip() for line in lines if "<seg id" in line]


def iwslt_sets(texts, pair, prefix, sets, src, tgt):
    """ParallelText per named dev/test set (e.g. TED.tst2010) and its line count, in the given order."""
    parts, counts = [], []
    for name in sets:
        source_member, target_member = (f"{pair}/{prefix}.{name}.{pair}.{lang}.xml" for lang in (src, tgt))
        part = pair_lines(iwslt_xml_lines(texts[source_member]), iwslt_xml_lines(texts[target_member]),
                          source_member, target_member)
        parts.append(part)
        counts.append({"name": f"{prefix}.{name}", "lines": len(part)})
    return parts, counts


def prepare_iwslt(args, *, corpus_name, pair, prefix, archive_key, drop_containing, valid_every, valid_sets,
                  test_sets, apostrophe_in_tests) -> Path:
    archive = dataclasses.replace(archives(corpus_name)[archive_key],
                                  members=iwslt_members(pair, prefix, [*valid_sets, *test_sets]))
    settings, paths, inputs, fingerprint = start(args, corpus_name, pair, [archive], valid_sets=valid_sets,
                                                 test_sets=test_sets)
    if fingerprint is None:
        return args.out_dir
    texts = read_archive_members(paths[archive_key], archive.members)
    src, tgt = settings.src, settings.tgt
    train_src, train_tgt = (f"{pair}/train.tags.{pair}.{lang}" for lang in (src, tgt))
    train = pair_lines(iwslt_train_lines(texts[train_src], drop_containing),
                       iwslt_train_lines(texts[train_tgt], drop_containing),
                       f"{paths[archive_key]}:{train_src}", f"{paths[archive_key]}:{train_tgt}")
    train_steps = text_steps(settings)
    test_steps = text_steps(settings, *(["apostrophe"] if apostrophe_in_tests else []))
    train = add_model_text(train, settings, train_steps, "train")
    train = clean_by_length(train, *settings.extra["cleaning"])
    if valid_every:
        train, valid = every_nth(train, valid_every)
        valid_counts = [{"name": f"every {valid_every}th cleaned training pair", "lines": len(valid)}]
    else:
        valid_parts, valid_counts = iwslt_sets(texts, pair, prefix, valid_sets, src, tgt)
        valid = add_model_text(ParallelText.concatenate(valid_parts), settings, test_steps, "valid")
    test_parts, test_counts = iwslt_sets(texts, pair, prefix, test_sets, src, tgt)
    test = add_model_text(ParallelText.concatenate(test_parts), settings, test_steps, "test")
    notes = {"splits": {"valid": valid_counts, "test": test_counts},
             "text_steps": {"train": list(train_steps), "valid": list(train_steps if valid_every else test_steps),
                            "test": list(test_steps)}}
    return build_dataset(args.out_dir, corpus_name, {"train": train, "valid": valid, "test": test},
                         settings, inputs, fingerprint, notes)

