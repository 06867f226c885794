"""Which adapters a server knows, which are resident, and which are in use (capacity and LRU eviction).

Adapters are known by name: those registered explicitly (``--adapter NAME=PATH``, ``/v1/load_lora_adapter``)
and every sub-directory of ``adapters_dir`` holding an adapter (its folder name; looked up on demand). Every
name follows the one name rule (:func:`prolora.tuner.saved.check_adapter_name`); a folder whose name breaks
it is not an adapter of ``adapters_dir``.
At most ``max_resident`` adapters are resident in the :class:`~.adapter_bank.AdapterBank`; a request for a
known adapter that is not resident loads it and evicts the least recently used adapter that no request is
using. An adapter with requests in flight (``pins``) is never evicted or unloaded.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from prolora.format import ADAPTER_DIR, adapter_dir, holds_adapter
from prolora.tuner.saved import check_adapter_name, valid_adapter_name

from .adapter_bank import AdapterBank


class UnknownAdapter(KeyError):
    """No adapter of that name is known (HTTP 404)."""


class AdapterBusy(RuntimeError):
    """Every resident adapter has requests in flight: no room for another one now (HTTP 503)."""


class AdapterInUse(AdapterBusy):
    """The adapter to unload has requests in flight (HTTP 409)."""


@dataclass
class AdapterEntry:
    """A known adapter: its path, the chat format its training run recorded (or None), its pin count."""

    name: str
    path: str
    chat_format: str | None = None
    pins: int = field(default=0)


def run_chat_format(path: str | os.PathLike) -> str | None:
    """The ``chat_format`` of the ``prolora train`` run an adapter came from (``run_config.json`` in the run
    directory, or the parent of its ``adapter/``), or None."""
    path = Path(path)
    for run in (path, path.parent if path.name == ADAPTER_DIR else None):
        if run is not None and (run / "run_config.json").is_file():
            try:
                return json.loads((run / "run_config.json").read_text()).get("chat_format")
            except (json.JSONDecodeError, AttributeError):
                return None
    return None


class AdapterRegistry:
    """Known adapters, the resident set (LRU) and pins, over one :class:`AdapterBank`.

    Args:
        bank: where resident adapters live.
        adapters_dir: a folder whose sub-folders are adapters, loaded on first use (None: none).
        max_resident: most adapters resident at once (None: no limit).
    """

    def __init__(
        self,
        bank: AdapterBank,
        adapters_dir: str | os.PathLike | None = None,
        max_resident: int | None = None,
    ):
        if max_resident is not None and max_resident < 1:
            raise ValueError(f"max_resident={max_resident} must be at least 1 (or None for no limit).")
        if adapters_dir is not None and not Path(adapters_dir).is_dir():
            raise FileNotFoundError(f"--adapters-dir {adapters_dir} is not a directory.")
        self.bank = bank
        self.adapters_dir = Path(adapters_dir) if adapters_dir is not None else None
        self.max_resident = max_resident
        self.entries: dict[str, AdapterEntry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # resident names, least recently used first
        self._lock = threading.RLock()
        self.loads = self.evictions = 0

    # ------------------------------------------------------------------------------------------ names
    def register(self, name: str, path: str | os.PathLike, load: bool = True) -> AdapterEntry:
        """Know adapter ``name`` at ``path`` and (by default) load it now, so that errors show at once.

        Raises:
            ValueError: the name is taken or invalid, or the adapter is corrupt or made for another model.
            FileNotFoundError: the path holds no adapter.
            AdapterBusy: every resident adapter has requests in flight.
        """
        check_adapter_name(name)
        with self._lock:
            if name in self.entries:
                raise ValueError(
                    f"an adapter named {name!r} is already loaded; unload it first or pick another name."
                )
            if self._in_adapters_dir(name):
                raise ValueError(
                    f"an adapter named {name!r} is served from --adapters-dir ({self.adapters_dir / name}); "
                    "pick another name."
                )
            entry = AdapterEntry(name, str(adapter_dir(path)), run_chat_format(path))
            if load:
                self._make_resident(entry)
            self.entries[name] = entry
            return entry

    def names(self) -> list[str]:
        """Every known adapter: registered ones and the adapter folders of ``adapters_dir``."""
        with self._lock:
            names = set(self.entries)
        if self.adapters_dir is not None:
            try:
                names.update(
                    p.name
                    for p in self.adapters_dir.iterdir()
                    if valid_adapter_name(p.name) and holds_adapter(p)
                )
            except (
                OSError
            ):  # the folder was removed or made unreadable while serving: list what is registered
                pass
        return sorted(names)

    def entry(self, name: str) -> AdapterEntry:
        """The entry of a known adapter (an ``adapters_dir`` folder is registered on first use).

        Raises:
            UnknownAdapter: no such adapter.
        """
        with self._lock:
            if name in self.entries:
                return self.entries[name]
            if self._in_adapters_dir(name):
                path = self.adapters_dir / name
                entry = AdapterEntry(name, str(adapter_dir(path)), run_chat_format(path))
                self.entries[name] = entry
                return entry
        raise UnknownAdapter(name)

    def _in_adapters_dir(self, name: str) -> bool:
        """Whether ``adapters_dir`` has an adapter folder of this name (served on first use)."""
        return (
            self.adapters_dir is not None
            and valid_adapter_name(name)
            and holds_adapter(self.adapters_dir / name)
        )

    # ------------------------------------------------------------------------------------ residency
    def acquire(self, name: str) -> AdapterEntry:
        """Pin adapter ``name`` for a request, loading it (and evicting the LRU unpinned one) if needed.

        Raises:
            UnknownAdapter, ValueError / FileNotFoundError (a bad adapter), AdapterBusy (no room).
        """
        with self._lock:
            entry = self.entry(name)
            if name not in self._lru:
                self._make_resident(entry)
            self._lru.move_to_end(name)
            entry.pins += 1
            return entry

    def release(self, name: str) -> None:
        """Unpin one request of adapter ``name``."""
        with self._lock:
            entry = self.entries.get(name)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1

    def unload(self, name: str) -> None:
        """Forget adapter ``name`` (an ``adapters_dir`` folder stays loadable on demand).

        Raises:
            UnknownAdapter: it is not known. AdapterInUse: requests are using it.
        """
        with self._lock:
            entry = self.entries.get(name)
            if entry is None:
                raise UnknownAdapter(name)
            if entry.pins:
                raise AdapterInUse(
                    f"adapter {name!r} has {entry.pins} request(s) in flight; unload it when they end."
                )
            if name in self._lru:
                self.bank.remove(name)
                del self._lru[name]
            del self.entries[name]

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._lru)

    def _make_resident(self, entry: AdapterEntry) -> None:
        if self.max_resident is not None:
            while len(self._lru) >= self.max_resident:
                victim = next((n for n in self._lru if self.entries[n].pins == 0), None)
                if victim is None:
                    raise AdapterBusy(
                        f"all {self.max_resident} resident adapters have requests in flight "
                        "(--max-resident); retry later."
                    )
                self.bank.remove(victim)
                del self._lru[victim]
                self.evictions += 1
        self.bank.load(entry.name, entry.path)
        self._lru[entry.name] = None
        self.loads += 1
