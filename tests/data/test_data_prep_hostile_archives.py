"""Hostile archives: members are streamed with a bound on what they inflate to, and encrypted members,
links, directories and other non-files where a recipe expects a file, bad CRCs and files that are no
archive at all are each refused in one line naming the archive and the member."""
import io
import stat
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from data_prep.archives import MIN_INFLATION_LIMIT, read_archive_members, verify_archive
from data_prep.textfiles import DataPrepError

MEMBERS = ("de-en/train.de", "de-en/train.en")


def zip_with(path: Path, special: zipfile.ZipInfo, data: bytes, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("de-en/train.en", "hello\n")
        archive.writestr(special, data)
    return path


def mark_last_member_encrypted(path):
    """zipfile writes no encrypted members: set the flag (bit 0) in the last member's local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.infolist()[-1].header_offset
    central = data.rindex(b"PK\x01\x02")
    data[local + 6] |= 0x1
    data[central + 8] |= 0x1
    path.write_bytes(bytes(data))
    return path


def odd_zip_member(path, how):
    info = zipfile.ZipInfo("de-en/train.de")
    if how == "encrypted":
        return mark_last_member_encrypted(zip_with(path, info, b"hallo\n"))
    if how == "symlink":
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
    elif how == "directory":
        info = zipfile.ZipInfo("de-en/train.de/")
        info.external_attr = (stat.S_IFDIR | 0o755) << 16
    return zip_with(path, info, b"/etc/passwd" if how == "symlink" else b"")


def odd_tar_member(path, how):
    with tarfile.open(path, "w:gz") as archive:
        data = b"hello\n"
        info = tarfile.TarInfo("de-en/train.en")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("de-en/train.de")
        info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "directory": tarfile.DIRTYPE,
                     "fifo": tarfile.FIFOTYPE}[how]
        info.linkname = "de-en/train.en" if how in ("symlink", "hardlink") else ""
        archive.addfile(info)
    return path


@pytest.mark.parametrize("fmt,how,problem", [
    ("zip", "encrypted", "is encrypted"), ("zip", "symlink", "is a link, not a file"),
    ("zip", "directory", "is a directory, not a file"), ("tgz", "symlink", "is a link, not a file"),
    ("tgz", "hardlink", "is a link, not a file"), ("tgz", "directory", "is a directory, not a file"),
    ("tgz", "fifo", "is not a regular file")])
def test_archive_members_that_are_not_plain_files_are_refused(tmp_path, fmt, how, problem):
    path = (odd_zip_member if fmt == "zip" else odd_tar_member)(tmp_path / f"a.{fmt}", how)
    assert verify_archive(path, MEMBERS) == f"member de-en/train.de {problem}"
    with pytest.raises(DataPrepError) as error:
        read_archive_members(path, MEMBERS)
    assert str(error.value) == f"archive {path}: member de-en/train.de {problem}"


def test_a_member_with_a_bad_crc_is_one_line(tmp_path):
    path = zip_with(tmp_path / "a.zip", zipfile.ZipInfo("de-en/train.de"), b"hallo welt\n" * 10, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    data[data.rindex(b"hallo welt")] ^= 0x20  # one letter's case: "Hallo"
    path.write_bytes(bytes(data))
    with pytest.raises(DataPrepError) as error:
        read_archive_members(path, MEMBERS)
    assert str(error.value).startswith(f"archive {path}: member de-en/train.de: BadZipFile: Bad CRC-32")


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_a_decompression_bomb_is_refused_before_it_is_read(tmp_path, fmt):
    size, block = MIN_INFLATION_LIMIT + (16 << 20), b"\0" * (1 << 20)
    path = tmp_path / f"bomb.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("de-en/train.en", "hello\n")
            with archive.open("de-en/train.de", "w", force_zip64=True) as member:
                for _ in range(size >> 20):
                    member.write(block)
    else:
        with tarfile.open(path, "w:gz") as archive:
            info = tarfile.TarInfo("de-en/train.de")
            info.size = size
            archive.addfile(info, io.BufferedReader(ZeroReader(size)))
    assert path.stat().st_size * 100 < size  # the limit is the floor, not 100 times the archive
    tracemalloc.start()
    try:
        with pytest.raises(DataPrepError) as error:
            read_archive_members(path, MEMBERS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value) == (f"archive {path}: member de-en/train.de inflates to more than {MIN_INFLATION_LIMIT} "
                                "bytes (100 times the archive's size): refused as a likely decompression bomb")
    assert peak < 8 << 20


class ZeroReader(io.RawIOBase):
    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), self.left)
        buffer[:count] = b"\0" * count
        self.left -= count
        return count


def test_a_file_that_is_no_archive_is_one_line(tmp_path):
    path = tmp_path / "de-en.tgz"
    path.write_bytes(b"<html>not found</html>\n" * 20)
    assert verify_archive(path, MEMBERS) == (
        "cannot be opened (not a tar archive (plain, gzip, bzip2 or xz) or damaged)")
