"""Atomic file and directory writes: readers see the old version or the new one, never a partial file.

Atomic against a killed process (the rename is the commit); a power loss may still lose the newest
version, since files are not fsync'ed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Run ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The parent directory is created if needed; on any error the temporary file is removed and ``path`` is
    left as it was. The file gets the permissions of a plain ``open(path, "w")`` (0666 less the umask), not
    the owner-only 0600 of a temporary file, so that servers running as other users can read adapters.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # after write: a writer may replace the file it was given
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj, sort_keys: bool = False) -> None:
    """Write ``obj`` as indented JSON (UTF-8, trailing newline) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def replace_dir(staging: str, final: str) -> None:
    """Move the finished directory ``staging`` to ``final``, replacing an existing ``final``.

    The new directory appears under ``final`` by one rename; an old ``final`` is first renamed aside and
    deleted afterwards (a directory cannot be renamed over a non-empty one).
    """
    os.chmod(staging, 0o777 & ~_umask())  # a mkdtemp() folder is owner-only
    old = f"{final}.old"
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
