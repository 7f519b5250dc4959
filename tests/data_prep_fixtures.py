"""Shared helpers for the data_prep tests: running the entry-point scripts, tiny corpora and
archives laid out like the real IWSLT/WMT downloads, and checks computed independently of data_prep."""
import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import sentencepiece as spm

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "data_prep"


def run_script(script, *args, check=True):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    proc = subprocess.run(["bash", str(SCRIPTS / script), *map(str, args)], env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def write(path: Path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read(path: Path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def leftovers(parent: Path):
    """Temporary build directories that a finished or failed run must not leave behind."""
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def assert_fairseq_bin(bin_dir: Path, src, tgt, counts):
    """The binarised splits hold exactly `counts` sentences and the dictionary is joined."""
    from fairseq.data import Dictionary, data_utils
    assert (bin_dir / f"dict.{src}.txt").read_text() == (bin_dir / f"dict.{tgt}.txt").read_text()
    dictionary = Dictionary.load(str(bin_dir / f"dict.{src}.txt"))
    for split, count in counts.items():
        for lang in (src, tgt):
            dataset = data_utils.load_indexed_dataset(str(bin_dir / f"{split}.{src}-{tgt}.{lang}"), dictionary)
            assert dataset is not None and len(dataset) == count, (split, lang)
    return dictionary


def assert_sentencepiece_consistent(out: Path, text_dir: str, src, tgt, splits=("train", "valid", "test")):
    """spm/ holds the encoding of the model text, and decoding its pieces gives that text back
    (ids too for training text: characters never seen in training become <unk> ids)."""
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    for split in splits:
        for lang in (src, tgt):
            text = read(out / text_dir / f"{split}.{lang}")
            pieces = read(out / "spm" / f"{split}.{lang}")
            assert pieces == [" ".join(p) for p in processor.encode(text, out_type=str)]
            assert [processor.decode_pieces(line.split()) for line in pieces] == text
            if split == "train":
                assert processor.decode(processor.encode(text)) == text
    return processor


# ------------------------------------------------------------------------------------------------
# custom

TRAIN_EN = ["Hello, World!", "The cat's toy isn't here.", "Mr. Smith went to Washington.",
            "It costs $5 (five dollars).", "Ünïcode is fine: naïve café."] * 6
TRAIN_DE = ["Hallo, Welt!", "Das Spielzeug der Katze ist nicht hier.", "Herr Smith ging nach Washington.",
            "Es kostet 5 $ (fünf Dollar).", "Ünïcode ist gut: naives Café."] * 6
VALID_EN, VALID_DE = ["Hello there, cat."], ["Hallo da, Katze."]
TEST_EN, TEST_DE = ["Good morning, Mr. Smith!", "A café."], ["Guten Morgen, Herr Smith!", "Ein Café."]


def write_custom(root: Path):
    for split, en, de in (("train", TRAIN_EN, TRAIN_DE), ("valid", VALID_EN, VALID_DE), ("test", TEST_EN, TEST_DE)):
        write(root / f"{split}.en", en)
        write(root / f"{split}.de", de)
    return root


def custom_args(root: Path, out: Path, *extra):
    return ["--src-lang", "en", "--tgt-lang", "de", "--train-prefix", root / "train",
            "--valid-prefix", root / "valid", "--test-prefix", root / "test", "--out-dir", out,
            "--vocab-size", "60", "--workers", "1", *extra]


def make_tgz(path: Path, members: dict):
    """A gzip-compressed tar with {member path: lines}, like the real .tgz downloads (a .zip by name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, lines in members.items():
                archive.writestr(name, "".join(line + "\n" for line in lines))
        return path
    with tarfile.open(path, "w:gz") as archive:
        for name, lines in members.items():
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def words(n, offset=0, cap=False):
    vocabulary = ["haus", "baum", "katze", "hund", "wasser", "licht", "stein", "vogel"]
    chosen = [vocabulary[(offset + i) % len(vocabulary)] for i in range(n)]
    return [w.capitalize() if cap and i == 0 else w for i, w in enumerate(chosen)]


def talk_pairs(count, seed):
    """(de, en, kept-by-cleaning) sentence pairs for train.tags: mostly clean, with some that
    clean-corpus-n must drop: empty, over 175 tokens, token ratio over 1.5."""
    pairs = []
    for i in range(count):
        n = 3 + (i + seed) % 6
        de = " ".join(words(n, i, cap=True)) + "."
        en = " ".join(w.upper() for w in words(n, i + 1)) + "."
        pairs.append((de, en, True))
        if i % 9 == 4:
            pairs.append(("Ja.", "Yes yes yes yes.", False))        # 2 vs 5 tokens
        if i % 11 == 6:
            pairs.append(("Ja ja.", "Yes yes yes.", True))         # 3 vs 4 tokens: ratio 1.33, kept
        if i % 13 == 7:
            long = " ".join(words(180, i))
            pairs.append((long, long, False))                       # 180 tokens > 175
    return pairs


def iwslt_train(pairs, talks, lang, extra_meta=()):
    """train.tags.* lines: per talk the metadata lines, then its sentences (de side or en side)."""
    lines, per_talk = [], len(pairs) // talks + 1
    for talk in range(talks):
        lines += [f"<url>http://www.ted.com/talks/talk_{talk}.html</url>",
                  f"<keywords>talks, topic{talk}</keywords>", *[m.format(talk=talk) for m in extra_meta],
                  f"<talkid>{talk}</talkid>",
                  f"<title>Title {talk} {lang.upper()}</title>",
                  f"<description>TED Talk Subtitles and Transcript: about {talk} {lang}</description>"]
        for de, en, _ in pairs[talk * per_talk:(talk + 1) * per_talk]:
            lines.append(de if lang == "de" else en)
    return lines


def iwslt_meta_pairs(talks, pairs):
    """The sentence pairs as the recipe sees them: title and description lines are sentences too."""
    out, per_talk = [], len(pairs) // talks + 1
    for talk in range(talks):
        out.append((f"Title {talk} DE", f"Title {talk} EN", True))
        out.append((f"TED Talk Subtitles and Transcript: about {talk} de",
                    f"TED Talk Subtitles and Transcript: about {talk} en", True))
        out += pairs[talk * per_talk:(talk + 1) * per_talk]
    return out


def iwslt_xml(lines, setid, lang):
    return ['<?xml version="1.0" encoding="UTF-8"?>', "<mteval>",
            f'<srcset setid="{setid}" srclang="{lang}">', '<doc docid="1" genre="lectures">',
            "<url>http://www.ted.com/talks/x.html</url>", "<talkid>1</talkid>", "<title>Not a sentence</title>",
            *[f'<seg id="{i + 1}"> {line} </seg>' for i, line in enumerate(lines)],
            "</doc>", "</srcset>", "</mteval>"]


def xml_set(name, count, apostrophe):
    label = name.replace(".", " ")
    de = [f"Satz {i} aus {label}." for i in range(count)]
    en = [(f"It\u2019s sentence {i} of {label}." if apostrophe and i == 0 else f"Sentence {i} of {label}.")
          for i in range(count)]
    return de, en


IWSLT14_SETS = ["TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012"]


def make_iwslt14_archive(root: Path):
    """de-en.tgz with train.tags (3 talks) and the five dev/test sets; returns the archive, the
    sentence pairs as the recipe sees them, and the sets' (de, en) lines."""
    pairs = talk_pairs(60, seed=0)
    members = {"de-en/train.tags.de-en.de": iwslt_train(pairs, 3, "de"),
               "de-en/train.tags.de-en.en": iwslt_train(pairs, 3, "en")}
    sets = {}
    for index, name in enumerate(IWSLT14_SETS):
        de, en = xml_set(name, 2 + index, apostrophe=True)
        sets[name] = (de, en)
        members[f"de-en/IWSLT14.{name}.de-en.de.xml"] = iwslt_xml(de, name, "german")
        members[f"de-en/IWSLT14.{name}.de-en.en.xml"] = iwslt_xml(en, name, "english")
    return make_tgz(root / "mirror" / "de-en.tgz", members), iwslt_meta_pairs(3, pairs), sets

def moses_like(line, lang):
    """The tokenisation of the fixture sentences, written out: final '.', ',' and ':' split off,
    "’s"/"'s" split in English."""
    line = line.replace("\u2019", "'")
    for mark in (".", ",", ":"):
        line = line.replace(mark, f" {mark}")
    return line.replace("'s", " 's") if lang == "en" else line


IWSLT17_VALID_SETS = ["TED.dev2010"]
IWSLT17_TEST_SETS = ["TED.tst2010", "TED.tst2011", "TED.tst2012", "TED.tst2013", "TED.tst2014", "TED.tst2015"]


def make_iwslt17_archive(path: Path, pairs):
    meta = ('<doc docid="{talk}" genre="lectures">', "<speaker>Speaker {talk}</speaker>",
            '<reviewer href="x">R</reviewer>', '<translator href="y">T</translator>')
    # fr-en: the "de" slot of the generated pairs is the French side.
    members = {"fr-en/train.tags.fr-en.fr": [*iwslt_train(pairs, 2, "de", meta), "</doc>"],
               "fr-en/train.tags.fr-en.en": [*iwslt_train(pairs, 2, "en", meta), "</doc>"]}
    sets = {}
    for index, name in enumerate(IWSLT17_VALID_SETS + IWSLT17_TEST_SETS):
        fr, en = xml_set(name, 1 + index, apostrophe=True)
        sets[name] = (fr, en)
        members[f"fr-en/IWSLT17.{name}.fr-en.fr.xml"] = iwslt_xml(fr, name, "french")
        members[f"fr-en/IWSLT17.{name}.fr-en.en.xml"] = iwslt_xml(en, name, "english")
    return make_tgz(path, members), sets


def sgm(lines, setid, kind):
    return [f'<{kind}set setid="{setid}" srclang="any">', '<doc sysid="ref" docid="d1" genre="news" origlang="en">',
            "<p>", *[f'<seg id="{i + 1}">{line}</seg>' for i, line in enumerate(lines)], "</p>", "</doc>",
            f"</{kind}set>"]


def make_wmt14_archives(raw_dir: Path):
    """The five archives with the members fairseq's prepare-wmt14en2de.sh reads (plus distractors)."""
    corpora = {}
    for name, count in (("europarl", 12), ("commoncrawl", 8), ("news-commentary", 10)):
        en = [f"{name} sentence {i} is here." for i in range(count)]
        de = [f"\u201e{name}\u201c Satz {i} ist hier." for i in range(count)]
        en.append("Short.")
        de.append("Ein viel zu langer deutscher Satz hier.")  # 2 vs 7 words: ratio 3.5, dropped
        corpora[name] = (en, de)
    make_tgz(raw_dir / "training-parallel-europarl-v7.tgz", {
        "training/europarl-v7.de-en.en": corpora["europarl"][0], "training/europarl-v7.de-en.de": corpora["europarl"][1],
        "training/europarl-v7.fr-en.en": ["not this"], "training/europarl-v7.fr-en.fr": ["pas ça"]})
    make_tgz(raw_dir / "training-parallel-commoncrawl.tgz", {
        "commoncrawl.de-en.en": corpora["commoncrawl"][0], "commoncrawl.de-en.de": corpora["commoncrawl"][1]})
    make_tgz(raw_dir / "training-parallel-nc-v12.tgz", {
        "training/news-commentary-v12.de-en.en": corpora["news-commentary"][0],
        "training/news-commentary-v12.de-en.de": corpora["news-commentary"][1]})
    valid = (["Valid one.", "Valid two."], ["Gültig eins.", "Gültig zwei."])
    make_tgz(raw_dir / "dev.tgz", {"dev/newstest2013.en": valid[0], "dev/newstest2013.de": valid[1],
                                   "dev/newstest2012.en": ["wrong"], "dev/newstest2012.de": ["falsch"]})
    test_en = ["Test \u201cone\u201d.", "It\u2019s test two.", "Test three."]
    test_de = ["Test eins.", "Test zwei.", "Test drei."]
    make_tgz(raw_dir / "test-full.tgz", {
        "test-full/newstest2014-deen-src.en.sgm": sgm(test_en, "newstest2014", "src"),
        "test-full/newstest2014-deen-ref.de.sgm": sgm(test_de, "newstest2014", "ref"),
        "test-full/newstest2014-deen-src.de.sgm": sgm(["Falsche Richtung."] * 3, "newstest2014", "src"),
        "test-full/newstest2014-deen-ref.en.sgm": sgm(["Wrong direction."] * 3, "newstest2014", "ref")})
    return corpora, valid, (test_en, test_de)

