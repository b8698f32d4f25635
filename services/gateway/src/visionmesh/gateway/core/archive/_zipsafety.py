"""Zip safety: what is checked before an entry is read, and bounded entry reads."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Sequence
from typing import IO, Final

from visionmesh.gateway.core.archive._violations import Reason, Violations

_JUNK_NAMES: Final = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
CHUNK: Final = 1 << 20
DRIVE_RE: Final = re.compile(r"^[A-Za-z]:")

# What zipfile raises on a damaged archive (open) or a damaged entry (read).
ZIP_OPEN_ERRORS: Final = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
)
ZIP_READ_ERRORS: Final = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
)


# --- the archive as a whole -------------------------------------------------------------


def declared_entry_count(fp: IO[bytes]) -> int | None:
    """Entry count from the end-of-central-directory record; None when it cannot be found."""
    fp.seek(0, io.SEEK_END)
    size = fp.tell()
    tail_len = min(size, 22 + 0xFFFF)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or len(tail) - pos < 22:
        return None
    (total,) = struct.unpack_from("<H", tail, pos + 10)
    if total != 0xFFFF:
        return int(total)
    # Zip64: the locator sits right before the classic record and points at the zip64 one.
    loc = pos - 20
    if loc < 0 or tail[loc : loc + 4] != b"PK\x06\x07":
        return int(total)
    (offset,) = struct.unpack_from("<Q", tail, loc + 8)
    if offset + 56 > size:
        return None
    fp.seek(offset)
    record = fp.read(56)
    if record[:4] != b"PK\x06\x06":
        return None
    (total64,) = struct.unpack_from("<Q", record, 32)
    return int(total64)


# --- entries: safety before anything is read --------------------------------------------


def _unsafe_name(name: str) -> str | None:
    if not name:
        return "empty path"
    if "\\" in name:
        return "backslash in path: zip paths must use '/' separators"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return "control character in path"
    if name.startswith("/"):
        return "absolute path"
    if DRIVE_RE.match(name):
        return "absolute path with a drive letter"
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        return "path escapes the archive ('..')"
    if any(part in ("", ".") for part in parts):
        return "path has an empty or '.' component"
    if any(len(part.encode()) > 255 for part in parts):
        return "path component longer than 255 bytes"
    return None


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    base = parts[-1]
    return "__MACOSX" in parts or base in _JUNK_NAMES or base.startswith("._")


def index_entries(infos: Sequence[zipfile.ZipInfo]) -> dict[str, zipfile.ZipInfo]:
    """Regular, non-junk files by name; raises when any entry is unsafe or unreadable."""
    violations = Violations()
    files: dict[str, zipfile.ZipInfo] = {}
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        problem = _unsafe_name(name)
        if problem:
            violations.add(name, problem, Reason.UNSAFE_PATH)
            continue
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            violations.add(name, "symbolic links are not allowed", Reason.SYMLINK)
            continue
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            violations.add(name, "not a regular file or folder", Reason.SPECIAL_FILE)
            continue
        if info.flag_bits & 0x1:
            violations.add(name, "encrypted entries are not supported", Reason.UNSUPPORTED_ENTRY)
            continue
        # bzip2/lzma decompress without an output bound in zipfile; deflate is what tools write.
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            violations.add(
                name,
                f"unsupported compression method {info.compress_type}: "
                "re-create the zip with deflate or no compression",
                Reason.UNSUPPORTED_ENTRY,
            )
            continue
        key = name.removesuffix("/")
        if key in seen:
            violations.add(name, "duplicate entry", Reason.DUPLICATE_ENTRY)
            continue
        seen.add(key)
        if name.endswith("/") or kind == stat.S_IFDIR or _is_junk(name):
            continue
        files[name] = info
    for name in files:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in files:
                violations.add(parent, "is both a file and a folder", Reason.DUPLICATE_ENTRY)
    violations.raise_if_any()
    return files


# --- content ----------------------------------------------------------------------------


class EntryError(Exception):
    """An entry's bytes cannot be read (bad CRC, truncated or corrupt compressed data)."""


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, *, keep: bool) -> tuple[str, bytes]:
    """The entry's sha256 and, when `keep`, its bytes.

    Reads in bounded chunks: zipfile stops at the declared size and checks the CRC, and a
    bounded read also bounds how much a lying deflate stream can inflate at once.
    """
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    try:
        with zf.open(info) as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                if keep:
                    chunks.append(chunk)
    except ZIP_READ_ERRORS as exc:
        raise EntryError(f"corrupt entry: {exc}") from exc
    return digest.hexdigest(), b"".join(chunks)
