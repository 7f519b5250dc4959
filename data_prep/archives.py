"""Archives of public corpora: downloaded once into --raw-dir (or put there by the user), checked
against the digest pinned in the registry, checked for the members a recipe reads, and read member
by member without extracting anything."""
import logging
import lzma
import stat
import tarfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from data_prep.textfiles import DataPrepError, decode_lines, file_digests

LOG = logging.getLogger("data_prep")
# The members a recipe reads may inflate to this many times the archive's size on disk, in all (text
# compresses 3 to 10 times; a decompression bomb a thousand times and more), and to at least
# MIN_INFLATION_LIMIT bytes: a small archive cannot make data prep hold gigabytes.
INFLATION_RATIO = 100
MIN_INFLATION_LIMIT = 64 << 20
# tarfile keeps each member's header in memory; the corpora's archives have a few hundred members.
MAX_MEMBERS = 100_000


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


def _reason(error: Exception) -> str:
    """One line for what went wrong opening or reading an archive (tarfile lists each compression it
    tried, one per line)."""
    if isinstance(error, tarfile.ReadError) and "\n" in str(error):
        return "not a tar archive (plain, gzip, bzip2 or xz) or damaged"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _entries(archive):
    """(name, kind, declared size, info) of each member, with the tar or zip name as the recipes use
    it; kind is "file", "directory", "link", "encrypted" or "special". At most MAX_MEMBERS of them:
    tarfile keeps every member's header in memory."""
    if isinstance(archive, zipfile.ZipFile):
        infos = archive.infolist()
    else:
        infos = archive
    for count, info in enumerate(infos, 1):
        if count > MAX_MEMBERS:
            raise ValueError(f"more than {MAX_MEMBERS} members")
        if isinstance(info, zipfile.ZipInfo):
            mode = info.external_attr >> 16
            kind = ("directory" if info.is_dir() else "encrypted" if info.flag_bits & 0x1
                    else "link" if stat.S_ISLNK(mode)
                    else "special" if stat.S_IFMT(mode) not in (0, stat.S_IFREG) else "file")
            yield info.filename.removeprefix("./").rstrip("/"), kind, info.file_size, info
        else:
            kind = ("file" if info.isfile() else "directory" if info.isdir()
                    else "link" if info.issym() or info.islnk() else "special")
            yield info.name.removeprefix("./"), kind, info.size, info


_KIND_PROBLEM = {"directory": "is a directory, not a file", "link": "is a link, not a file",
                 "encrypted": "is encrypted", "special": "is not a regular file"}


def archive_members(path: Path) -> set:
    with _open_archive(path) as archive:
        return {name for name, _, _, _ in _entries(archive)}


def verify_archive(path: Path, members) -> Optional[str]:
    """None when `path` opens and holds every member as a plain file, else why not."""
    try:
        with _open_archive(path) as archive:
            kinds = {name: kind for name, kind, _, _ in _entries(archive)}
    except Exception as error:  # any damage: truncated gzip, not a tar, ...
        return f"cannot be opened ({_reason(error)})"
    missing = [member for member in members if member not in kinds]
    if missing:
        return f"lacks {', '.join(missing)}"
    odd = [member for member in members if kinds[member] != "file"]
    return f"member {odd[0]} {_KIND_PROBLEM[kinds[odd[0]]]}" if odd else None


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
    candidates = (path, *(raw_dir / name for name in archive.also_named))
    for candidate in candidates:
        if candidate.exists() and not candidate.is_file():  # a FIFO would block, a directory is no archive
            raise DataPrepError(f"archive {candidate} is not a regular file; remove it or put the archive there")
    present = [candidate for candidate in candidates if candidate.is_file()]
    if present:
        path = present[0]
        LOG.info("using %s (already present; download skipped)", path)
    elif offline:
        raise DataPrepError(f"missing archive: {path} (--offline; download it from {url})")
    else:
        raw_dir.mkdir(parents=True, exist_ok=True)
        download(url, path)
    return path


def inflation_limit(path: Path) -> int:
    """The most bytes the members a recipe reads may inflate to, in all (see INFLATION_RATIO)."""
    return max(MIN_INFLATION_LIMIT, INFLATION_RATIO * path.stat().st_size)


def read_archive_members(path: Path, members) -> dict:
    """{member: lines} for the wanted members, in one pass over the archive, streamed: reading stops
    at inflation_limit bytes in all. Line-breaking characters inside a line are replaced by spaces
    (see textfiles.decode_lines): an archive cannot be edited. A damaged, encrypted, oversized or
    non-file member is an error naming it."""
    wanted, found = set(members), {}
    budget = limit = inflation_limit(path)
    name = None
    try:
        with _open_archive(path) as archive:
            for name, kind, size, info in _entries(archive):
                if name not in wanted:
                    continue
                if kind != "file":
                    raise DataPrepError(f"archive {path}: member {name} {_KIND_PROBLEM[kind]}")
                if size > budget:
                    raise _too_large(path, name, limit)
                LOG.info("reading %s:%s", path.name, name)
                data = _read_bounded(archive, info, budget, path, name, limit)
                budget -= len(data)
                found[name] = decode_lines(data, f"{path}:{name}", replace_line_breaking=True)
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError,
            ValueError, NotImplementedError, RuntimeError) as error:
        where = f"member {name}: " if name else ""
        raise DataPrepError(f"archive {path}: {where}{_reason(error)} (a damaged or changed archive: delete "
                            "it to download it again, or replace it)") from None
    return found


def _too_large(path, name, limit):
    return DataPrepError(f"archive {path}: member {name} inflates to more than {limit} bytes "
                         f"({INFLATION_RATIO} times the archive's size): refused as a likely decompression bomb")


def _read_bounded(archive, info, budget, path, name, limit) -> bytes:
    """The member's bytes, read in blocks, never more than `budget` of them (a zip header may
    understate the size; zipfile checks the CRC at the end)."""
    with (archive.open(info) if isinstance(archive, zipfile.ZipFile) else archive.extractfile(info)) as member:
        blocks, total = [], 0
        for block in iter(lambda: member.read(1 << 20), b""):
            total += len(block)
            if total > budget:
                raise _too_large(path, name, limit)
            blocks.append(block)
    return b"".join(blocks)


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
