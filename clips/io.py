"""Atomic file writes and safe clip names, shared by every stage that writes outputs.

Usage:
    check_name(name)                               # before a clip name becomes a file name
    atomic_write_text(out / "submission.csv", text)
    atomic_save_npz(cache / f"{name}.npz", feature=vec, mask=np.array(True))
    remove_partials(cache)                         # at the start of a run: temp files a kill -9 left behind
    join_checked(part_files, cache_root() / "whisper-base-ct2" / "model.bin", sha256)  # model weights in parts

A writer killed mid-write leaves only a hidden `.<name>.<random>.part` file: readers never match that
pattern, and the next run of the stage that owns the folder removes it.

Models that the package registry ships in parts (Whisper base, the Qwen2.5 GGUF files) are joined once under
cache_root() ($MER_SEMI_CACHE, else ~/.cache/mer-semi) by join_checked, which lets a file appear only when its
sha256 matches.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np

_BAD_NAME = re.compile(r"[/\\\x00-\x1f]")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be used as a clip name (a file stem), or None when it can."""
    if not name or not name.strip():
        return "the name is empty"
    if name != name.strip():
        return "the name has leading or trailing blanks"
    if _BAD_NAME.search(name):
        return "the name contains a path separator or control character"
    if name in (".", "..") or name.startswith(".."):
        return "the name starts with '..'"
    return None


def check_name(name: str) -> str:
    """Return `name` unchanged, or raise ValueError if it could write outside its folder."""
    problem = name_problem(name)
    if problem:
        raise ValueError(f"clip name {name!r} is not safe as a file name: {problem}; rename the clip")
    return name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def remove_partials(folder: Path) -> int:
    """Delete the `.part` temporary files a killed writer left in `folder` (not recursive).

    Call it only where no other process writes into `folder` at the same time.
    Returns:
        how many files were removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.glob(".*.part"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text version of atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez (no pickled objects) written atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz written by atomic_save_npz; never unpickles."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


CACHE_ENV = "MER_SEMI_CACHE"


def cache_root() -> Path:
    """$MER_SEMI_CACHE, else ~/.cache/mer-semi: where models joined from registry parts live."""
    base = os.environ.get(CACHE_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "mer-semi"


def file_sha256(path: Path, chunk: int = 16 << 20) -> str:
    """Hex sha256 of the file at `path`, read in `chunk`-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def join_checked(parts: list[Path], out: Path, sha256: str, size_bytes: int | None = None) -> Path:
    """Concatenate `parts` into `out`, hashing on the way; `out` appears (renamed into place) only when the sha256
    (and `size_bytes`, when given) match. The partial file has a per-process name, so two processes may join the
    same file at once. Returns `out`.

    Raises ValueError naming both digests, and leaves nothing behind, on a mismatch.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as handle:
        for part in parts:
            with open(part, "rb") as source:
                while block := source.read(16 << 20):
                    digest.update(block)
                    handle.write(block)
    written = partial.stat().st_size
    if digest.hexdigest() != sha256 or (size_bytes is not None and written != size_bytes):
        partial.unlink()
        raise ValueError(f"{out.name}: the joined parts have sha256 {digest.hexdigest()} ({written:,} bytes), "
                         f"expected {sha256} ({size_bytes or 0:,} bytes); refusing them")
    os.replace(partial, out)
    return out
