#!/usr/bin/env python3
"""Writes the demo's synthetic parallel corpus: a deterministic toy language pair with real structure.

Source ("src"): verb-final (SOV), agglutinative. A noun is one word: stem + plural + case + definiteness
suffixes; adjectives follow their noun and never change; the verb is stem + tense + subject-agreement.
Target ("tgt"): SVO with articles and tense auxiliaries. Articles and adjectives agree with the noun's
gender (a property of the target lexicon the model has to memorise) and number; adjectives precede
the noun; location phrases become prepositional phrases after the object.

So a model has to learn a lexicon of a few hundred stems that a subword model must first segment out
of agglutinated words, long-distance reordering (the source verb comes last, the target verb second)
and agreement. Everything is generated from --seed alone: the same arguments give the same files.

Usage: python -m scripts.make_demo_corpus --out-dir D [--train-size N] [--valid-size N] [--test-size N] [--seed S]
writes D/{train,valid,test}.{src,tgt} (one sentence a line, each file written atomically).
"""
import argparse
import os
import random
import sys
from dataclasses import dataclass

from scripts.atomic_io import atomic_open

SRC_LANG, TGT_LANG = "src", "tgt"
CONSONANTS = "ptkbdgmnlrsvz"
VOWELS = "aeiou"

# Source morphology: suffixes on one word (stem-PLURAL-CASE-DEFINITE), verb stem-TENSE-AGREEMENT.
SRC_PLURAL = "ri"
SRC_CASE = {"nom": "", "acc": "ko", "loc": "mi"}
SRC_DEFINITE = "n"
SRC_TENSE = {"past": "ta", "present": "", "future": "vu"}
SRC_PLURAL_SUBJECT = "se"
SRC_AND = "ebe"
# Target function words: articles by (definite, gender, plural), tense auxiliaries, agreement endings.
TGT_ARTICLE = {
    (True, "m", False): "lo", (True, "f", False): "la", (True, "m", True): "los", (True, "f", True): "las",
    (False, "m", False): "un", (False, "f", False): "una", (False, "m", True): "unos", (False, "f", True): "unas",
}
TGT_ADJECTIVE_ENDING = {("m", False): "o", ("f", False): "a", ("m", True): "os", ("f", True): "as"}
TGT_NOUN_PLURAL = "s"
TGT_AUXILIARY = {"past": "ha", "present": None, "future": "va"}
TGT_VERB_ENDING = {False: "e", True: "en"}
TGT_IN = "en"
TGT_AND = "y"


@dataclass(frozen=True)
class Noun:
    src: str
    tgt: str
    gender: str


@dataclass
class Lexicon:
    nouns: list
    adjectives: list  # (src, tgt stem)
    verbs: list       # (src, tgt stem, transitive)


def _stems(rng, count, syllables, taken):
    stems = []
    while len(stems) < count:
        stem = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice(syllables)))
        if stem not in taken:
            taken.add(stem)
            stems.append(stem)
    return stems


def make_lexicon(rng, nouns=80, adjectives=24, verbs=32):
    src_taken, tgt_taken = set(), set()
    src_nouns = _stems(rng, nouns, (2, 3), src_taken)
    tgt_nouns = _stems(rng, nouns, (2, 3), tgt_taken)
    return Lexicon(
        nouns=[Noun(s, t, rng.choice("mf")) for s, t in zip(src_nouns, tgt_nouns)],
        adjectives=list(zip(_stems(rng, adjectives, (2, 3), src_taken), _stems(rng, adjectives, (2,), tgt_taken))),
        verbs=[(s, t, rng.random() < 0.7)
               for s, t in zip(_stems(rng, verbs, (2, 3), src_taken), _stems(rng, verbs, (2, 3), tgt_taken))],
    )


def noun_phrase(rng, lexicon, case):
    """One noun phrase in both languages; returns (src words, tgt words, plural)."""
    noun = rng.choice(lexicon.nouns)
    plural, definite = rng.random() < 0.4, rng.random() < 0.6
    adjectives = rng.sample(lexicon.adjectives, k=rng.choice((0, 0, 1, 1, 2)))
    src = [noun.src + (SRC_PLURAL if plural else "") + SRC_CASE[case] + (SRC_DEFINITE if definite else "")]
    src += [a for a, _ in adjectives]
    tgt = [TGT_ARTICLE[definite, noun.gender, plural]]
    tgt += [t + TGT_ADJECTIVE_ENDING[noun.gender, plural] for _, t in adjectives]
    tgt.append(noun.tgt + (TGT_NOUN_PLURAL if plural else ""))
    return src, tgt, plural


def clause(rng, lexicon):
    verb_src, verb_tgt, transitive = rng.choice(lexicon.verbs)
    tense = rng.choice(tuple(SRC_TENSE))
    subject_src, subject_tgt, plural = noun_phrase(rng, lexicon, "nom")
    src, tgt = list(subject_src), list(subject_tgt)
    if TGT_AUXILIARY[tense]:
        tgt.append(TGT_AUXILIARY[tense])
    tgt.append(verb_tgt + TGT_VERB_ENDING[plural])
    if transitive:
        object_src, object_tgt, _ = noun_phrase(rng, lexicon, "acc")
        src += object_src
        tgt += object_tgt
    if rng.random() < 0.35:
        place_src, place_tgt, _ = noun_phrase(rng, lexicon, "loc")
        src += place_src
        tgt += [TGT_IN] + place_tgt
    src.append(verb_src + SRC_TENSE[tense] + (SRC_PLURAL_SUBJECT if plural else ""))
    return src, tgt


def sentence(rng, lexicon):
    src, tgt = clause(rng, lexicon)
    if rng.random() < 0.15:
        src2, tgt2 = clause(rng, lexicon)
        src, tgt = src + [SRC_AND] + src2, tgt + [TGT_AND] + tgt2
    # Capitalised and punctuated, so that detokenised, cased BLEU is meaningful.
    return " ".join(src).capitalize() + ".", " ".join(tgt).capitalize() + "."


def write_corpus(out_dir, sizes, seed):
    rng = random.Random(seed)
    lexicon = make_lexicon(rng)
    os.makedirs(out_dir, exist_ok=True)
    seen = set()
    for split, count in sizes:
        pairs = []
        while len(pairs) < count:
            pair = sentence(rng, lexicon)
            if pair[0] in seen:  # keep valid/test sentences unseen in training
                continue
            seen.add(pair[0])
            pairs.append(pair)
        for index, lang in enumerate((SRC_LANG, TGT_LANG)):
            path = os.path.join(out_dir, f"{split}.{lang}")
            with atomic_open(path) as handle:
                handle.writelines(pair[index] + "\n" for pair in pairs)
    return lexicon


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--train-size", type=int, default=int(os.environ.get("DEMO_TRAIN_SIZE", 30000)))
    parser.add_argument("--valid-size", type=int, default=int(os.environ.get("DEMO_VALID_SIZE", 500)))
    parser.add_argument("--test-size", type=int, default=int(os.environ.get("DEMO_TEST_SIZE", 500)))
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for name in ("train_size", "valid_size", "test_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    sizes = (("train", args.train_size), ("valid", args.valid_size), ("test", args.test_size))
    write_corpus(args.out_dir, sizes, args.seed)
    print(f"[demo corpus] wrote {', '.join(f'{n} {c}' for n, c in sizes)} sentence pairs "
          f"({SRC_LANG}->{TGT_LANG}, seed {args.seed}) to {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
