"""Archives of public corpora: downloaded once into --raw-dir (or put there by the user), checked
against the digest pinned in the registry, checked for the members a recipe reads, and read member
by member without extracting anything."""
import logging
import tarfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from data_prep.textfiles import DataPrepError, decode_lines, file_digests

LOG = logging.getLogger("data_prep")


@dataclass(frozen=True)
class Archive:
    key: str        # names the --KEY-url flag and the entry in prepare.json's inputs
    url: str
    members: tuple  # paths inside the archive that the recipe reads
    # {file name: "ALGORITHM:HEX"} as published for that file; a name without one is unpinned.
    digests: dict = field(default_factory=dict)
    also_named: tuple = ()  # other file names of the same archive (another mirror's), accepted in --raw-dir

    def local_name(self, url=None) -> str:
        return Path(urllib.parse.urlparse(url or self.url).path).name


def _open_archive(path: Path):
    if path.name.endswith(".zip"):
        return zipfile.ZipFile(path)
    return tarfile.open(path, "r:*")


def archive_members(path: Path) -> set:
    with _open_archive(path) as archive:
        names = archive.namelist() if hasattr(archive, "namelist") else archive.getnames()
    return {name.removeprefix("./") for name in names}


def verify_archive(path: Path, members) -> Optional[str]:
    """None when `path` opens and holds every member, else why not."""
    try:
        present = archive_members(path)
    except Exception as error:  # any damage: truncated gzip, not a tar, ...
        return f"cannot be opened ({type(error).__name__}: {error})"
    missing = [member for member in members if member not in present]
    return f"lacks {', '.join(missing)}" if missing else None


def check_digest(path: Path, archive: Archive, verify: bool) -> dict:
    """prepare.json's record of the archive: its sha256 and how it was checked. A digest that differs
    from the pinned one is an error naming the file and both digests (unless `verify` is off)."""
    pinned = archive.digests.get(path.name)
    algorithm, expected = pinned.split(":", 1) if pinned else ("sha256", None)
    digests = file_digests(path, sorted({"sha256", algorithm}))
    actual = digests[algorithm]
    if not verify:
        LOG.warning("%s: digest check skipped (--no-verify); its sha256 is %s", path, digests["sha256"])
        check = "skipped (--no-verify)"
    elif expected is None:
        LOG.warning("%s: no published checksum is pinned for this file; its sha256 is %s", path, digests["sha256"])
        check = "unpinned"
    elif actual != expected:
        raise DataPrepError(f"archive {path}: {algorithm} {actual}, expected {expected} (a changed or corrupted "
                            "download: delete it to download it again; --no-verify accepts your own copy)")
    else:
        LOG.info("%s: %s matches the pinned digest", path, algorithm)
        check = f"{algorithm} pinned, matches"
    return {"sha256": digests["sha256"], "checksum": check}


def download(url: str, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".part")
    LOG.info("downloading %s to %s", url, destination)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as progress:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    progress.update(len(block))
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise DataPrepError(f"download of {url} failed ({error}); put {destination.name} into "
                            f"{destination.parent} yourself and run again") from None
    partial.rename(destination)


def ensure_archive(raw_dir: Path, archive: Archive, url: str, offline: bool) -> Path:
    """The archive in raw_dir, downloaded first unless present; checked to hold its members."""
    path = raw_dir / archive.local_name(url)
    present = [candidate for candidate in (path, *(raw_dir / name for name in archive.also_named))
               if candidate.is_file()]
    if present:
        path = present[0]
        LOG.info("using %s (already present; download skipped)", path)
    elif offline:
        raise DataPrepError(f"missing archive: {path} (--offline; download it from {url})")
    else:
        raw_dir.mkdir(parents=True, exist_ok=True)
        download(url, path)
    return path


def read_archive_members(path: Path, members) -> dict:
    """{member: lines} for the wanted members, in one pass over the archive. Line-breaking characters
    inside a line are replaced by spaces (see textfiles.decode_lines): an archive cannot be edited."""
    wanted, found = set(members), {}
    with _open_archive(path) as archive:
        if hasattr(archive, "namelist"):
            entries = ((name, lambda name=name: archive.read(name)) for name in archive.namelist())
        else:
            entries = ((info.name, lambda info=info: archive.extractfile(info).read())
                       for info in archive if info.isfile())
        for name, read in entries:
            name = name.removeprefix("./")
            if name in wanted:
                LOG.info("reading %s:%s", path.name, name)
                found[name] = decode_lines(read(), f"{path}:{name}", replace_line_breaking=True)
                if len(found) == len(wanted):
                    break
    return found


def fetch_archives(args, archives) -> tuple:
    """({key: path}, inputs for prepare.json) for a corpus' archives: each one downloaded unless present,
    its digest checked (unless --no-verify), then checked to hold the members the recipe reads."""
    paths, inputs = {}, {}
    for archive in archives:
        url = getattr(args, f"{archive.key.replace('-', '_')}_url")
        path = ensure_archive(args.raw_dir, archive, url, args.offline)
        checked = check_digest(path, archive, args.verify)
        problem = verify_archive(path, archive.members)
        if problem:
            raise DataPrepError(f"archive {path} {problem}; delete it to download it again, or replace it")
        paths[archive.key] = path
        inputs[archive.key] = {"path": str(path.resolve()), "url": url, "bytes": path.stat().st_size, **checked}
    return paths, inputs
