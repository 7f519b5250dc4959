"""The registry of public corpora and the digest check of their archives: a changed or corrupted
archive, downloaded or put into --raw-dir, is refused in one line naming the file and both digests."""
import hashlib
import logging
import re

import pytest

from data_prep import registry
from data_prep.archives import Archive, check_digest, read_archive_members
from data_prep.recipes import RECIPES
from data_prep.textfiles import DataPrepError
from tests.data_prep_fixtures import leftovers, make_tgz, make_wmt14_archives, run_script

DIGEST_LENGTHS = {"sha256": 64, "md5": 32}


@pytest.mark.parametrize("corpus", sorted(registry.CORPORA))
def test_registry_entries_are_complete_and_well_formed(corpus):
    archives = registry.CORPORA[corpus]
    assert corpus in {recipe.NAME for recipe in RECIPES}
    assert len({archive.key for archive in archives}) == len(archives)
    for archive in archives:
        assert archive.url.startswith(("http://", "https://")) and archive.members
        names = {archive.local_name(), *archive.also_named}
        assert set(archive.digests) <= names, "a digest for a file name the archive never has"
        for pinned in archive.digests.values():
            algorithm, hex_digest = pinned.split(":")
            assert re.fullmatch(f"[0-9a-f]{{{DIGEST_LENGTHS[algorithm]}}}", hex_digest)


def test_the_unpinned_archives_are_exactly_those_without_a_published_digest():
    unpinned = sorted(name for archives in registry.CORPORA.values() for archive in archives
                      for name in (archive.local_name(), *archive.also_named) if name not in archive.digests)
    assert unpinned == ["de-en.tgz", "fr-en.zip"]


@pytest.fixture
def archive_file(tmp_path):
    return make_tgz(tmp_path / "x.tgz", {"a/b.txt": ["one", "two"]})


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_a_pinned_digest_that_matches_is_accepted_and_one_that_differs_is_named(archive_file, algorithm):
    data = archive_file.read_bytes()
    right = hashlib.new(algorithm, data).hexdigest()
    sha256 = hashlib.sha256(data).hexdigest()
    pinned = Archive("x", "http://example.org/x.tgz", ("a/b.txt",), digests={"x.tgz": f"{algorithm}:{right}"})
    assert check_digest(archive_file, pinned, verify=True) == {"sha256": sha256,
                                                               "checksum": f"{algorithm} pinned, matches"}
    wrong = "0" * len(right)
    changed = Archive("x", pinned.url, pinned.members, digests={"x.tgz": f"{algorithm}:{wrong}"})
    with pytest.raises(DataPrepError) as error:
        check_digest(archive_file, changed, verify=True)
    assert str(error.value).startswith(f"archive {archive_file}: {algorithm} {right}, expected {wrong} ")
    assert check_digest(archive_file, changed, verify=False) == {"sha256": sha256,
                                                                 "checksum": "skipped (--no-verify)"}


def test_an_unpinned_archive_is_accepted_with_its_digest_in_the_log(archive_file, caplog):
    unpinned = Archive("x", "http://example.org/x.tgz", ("a/b.txt",))
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        record = check_digest(archive_file, unpinned, verify=True)
    sha256 = hashlib.sha256(archive_file.read_bytes()).hexdigest()
    assert record == {"sha256": sha256, "checksum": "unpinned"}
    assert f"no published checksum is pinned for this file; its sha256 is {sha256}" in caplog.text


@pytest.mark.parametrize("how", ["in --raw-dir", "downloaded"])
def test_a_changed_wmt14_archive_is_refused_in_one_line(tmp_path, how):
    """The fixture archives stand for changed downloads: their digests are not the published ones."""
    made = tmp_path / "made"
    make_wmt14_archives(made)
    europarl = made / "training-parallel-europarl-v7.tgz"
    raw_dir = tmp_path / "downloads"
    if how == "in --raw-dir":
        made.rename(raw_dir)
        europarl = raw_dir / europarl.name
        flags = ["--offline"]
    else:  # file:// URLs exercise the download path without a network
        flags = [f"--{archive.key}-url={(made / archive.local_name()).as_uri()}"
                 for archive in registry.CORPORA["wmt14-en-de"]]
    proc = run_script("prepare_wmt14_en_de.sh", "--raw-dir", raw_dir, "--out-dir", tmp_path / "out", *flags,
                      check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    actual = hashlib.sha256(europarl.read_bytes()).hexdigest()
    expected = registry.archives("wmt14-en-de")["europarl"].digests[europarl.name].split(":")[1]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: archive {raw_dir / europarl.name}: sha256 {actual}, expected {expected} ")
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_line_breaking_characters_in_an_archive_become_spaces(tmp_path, caplog):
    """An archive cannot be edited, so a U+2028 or a lone CR inside a line is replaced, not refused."""
    path = make_tgz(tmp_path / "x.tgz", {"a.txt": ["fine", "one\u2028two", "three\rfour", "\x85"]})
    with caplog.at_level(logging.WARNING, logger="data_prep"):
        lines = read_archive_members(path, ["a.txt"])["a.txt"]
    assert lines == ["fine", "one two", "three four", " "]
    assert f"{path}:a.txt: line-breaking characters replaced by spaces on 3 lines (first: line 2)" in caplog.text


@pytest.mark.parametrize("recipe", RECIPES, ids=[recipe.NAME for recipe in RECIPES])
def test_command_line_defaults_are_the_settings_defaults_or_the_recipes(recipe):
    import dataclasses

    from data_prep.cli import build_parser
    from data_prep.settings import Settings
    required = ["--src-lang", "en", "--tgt-lang", "de", "--out-dir", "o", "--train-prefix", "t",
                "--valid-prefix", "v", "--test-prefix", "t"] if recipe.NAME == "custom" else []
    args = build_parser().parse_args([recipe.NAME, *required])
    assert args.handler is recipe.run
    for item in dataclasses.fields(Settings):
        if item.name == "extra" or (recipe.NAME == "custom" and item.name in ("src", "tgt")):
            continue  # custom's languages are required flags, given above
        plain = item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default
        assert getattr(args, item.name) == recipe.DEFAULTS.get(item.name, plain), item.name
    if recipe.ARCHIVES:
        assert (args.min_tokens, args.max_tokens, args.max_ratio) == tuple(recipe.CLEANING.values())
        assert args.verify is True and args.offline is False
        for archive in recipe.ARCHIVES:
            assert getattr(args, f"{archive.key.replace('-', '_')}_url") == archive.url
