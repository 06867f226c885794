"""Atomic file and directory writes: readers see the old version or the new one, never a partial file.

Atomic against a killed process (the rename is the commit); a power loss may still lose the newest
version, since files are not fsync'ed.
"""

from __future__ import annotations

import json
import os
import shutil


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` via a temporary file and :func:`os.replace`."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def replace_dir(staging: str, final: str) -> None:
    """Move the finished directory ``staging`` to ``final``, replacing an existing ``final``.

    The new directory appears under ``final`` by one rename; an old ``final`` is first renamed aside and
    deleted afterwards (a directory cannot be renamed over a non-empty one).
    """
    old = f"{final}.old"
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
