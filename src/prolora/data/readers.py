"""Reading instruction data into conversations, reporting bad records instead of failing on them.

Sources (``read_source``):

- ``None`` or ``"embedded"``: the instruction set shipped in this package (``embedded/``, see its
  ``SOURCE.md``); ``split`` selects ``"train"`` or ``"heldout"``.
- a ``.jsonl`` file: one JSON object per line; a ``.json`` file: one JSON array of objects.
- anything else: a Hugging Face dataset name, ``NAME`` or ``NAME:SPLIT`` (default split ``train``),
  loaded with :func:`datasets.load_dataset` (needs network or a local cache).

Each object is either in ``messages`` format — ``{"messages": [{"role": "system"|"user"|"assistant",
"content": str}, ...]}`` with at least one non-empty assistant turn — or Alpaca style —
``{"instruction": str, "input": str (optional), "output": str}``, which becomes one user turn
(instruction, then a blank line and the input when it is non-empty) and one assistant turn (output).
Other keys are ignored. Blank lines of a JSONL file are skipped silently.

A record that is not valid JSON (or nested deeper than the parser allows), has neither format, has an
unknown role or an empty assistant turn is skipped and reported as an :class:`Issue` with its origin
(``file.jsonl line 9``, ``file.json[3]``); reading never raises for a bad record, only for an unreadable
source: a file that is not UTF-8 text, holds a NUL byte (a binary file), or a ``.json`` file that is not
one JSON array (malformed, or nested too deeply), each a :class:`ValueError` naming the file and the fix.
A UTF-8 byte-order mark at the start of a file is accepted.

Size: a record whose message contents exceed :data:`MAX_RECORD_BYTES` (1 MiB of UTF-8) is cut to that many
bytes, its messages in order, before anything tokenizes it, and reported (``truncated``): tokenizing a
150 MB text would take gigabytes, and training keeps only the first ``--max-length`` tokens anyway (512
tokens are a few kB). Records within the cap are returned exactly as read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources

ROLES = ("system", "user", "assistant")
EMBEDDED = "embedded"
MAX_RECORD_BYTES = 1 << 20  # UTF-8 bytes of a record's message contents kept before tokenization
_EMBEDDED_FILES = {"train": "flan_cot_train.jsonl", "heldout": "flan_cot_heldout.jsonl"}


@dataclass(frozen=True)
class Record:
    """One conversation and where it came from (``path line N`` or ``dataset[index]``)."""

    messages: list[dict]
    origin: str


@dataclass(frozen=True)
class Issue:
    """A problem with one record: where, what, and what was done (``"skipped"`` or ``"truncated"``)."""

    origin: str
    problem: str
    action: str

    def __str__(self) -> str:
        return f"{self.origin}: {self.problem} ({self.action})"


def summarize_issues(issues: list[Issue], kinds: int = 3) -> list[str]:
    """The first ``kinds`` distinct problems, each once, with where it first occurred and how often it
    recurs: ``"d.jsonl line 2 (and 7 more): invalid JSON (Expecting value at column 1) (skipped)"``."""
    where: dict[tuple[str, str], list[str]] = {}
    for issue in issues:
        where.setdefault((issue.problem, issue.action), []).append(issue.origin)
    lines = [
        f"{origins[0]}{f' (and {len(origins) - 1} more)' if len(origins) > 1 else ''}: {problem} ({action})"
        for (problem, action), origins in list(where.items())[:kinds]
    ]
    if len(where) > kinds:
        lines.append(f"... and {len(where) - kinds} other kind(s) of problem")
    return lines


def to_messages(obj) -> list[dict]:
    """Normalise one record to a message list.

    Raises:
        ValueError, TypeError: with a message naming what is wrong (the caller reports it with the
            record's origin).
    """
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(
                    f"messages[{i}] must be {{'role': one of {ROLES}, 'content': str}}, got {m!r:.80}"
                )
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif "instruction" in obj and "output" in obj:
        parts = [obj["instruction"], obj.get("input") or ""]
        if not all(isinstance(x, str) for x in (*parts, obj["output"])):
            raise ValueError("Alpaca fields 'instruction', 'input', 'output' must be strings")
        user = "\n\n".join(p.strip() for p in parts if p.strip())
        if not user:
            raise ValueError("empty 'instruction' and 'input'")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": obj["output"]}]
    else:
        raise ValueError(
            f"neither a 'messages' list nor Alpaca 'instruction'/'output' fields (keys: {sorted(obj)})"
        )
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ValueError("no non-empty assistant turn to train on")
    return messages


def cap_record(messages: list[dict], cap: int = MAX_RECORD_BYTES) -> tuple[list[dict], int | None]:
    """``messages`` with their contents cut, in order, to ``cap`` UTF-8 bytes in all; returns ``(messages,
    bytes before the cut)``, the second ``None`` (and the list itself) when the record is within the cap."""
    if (
        sum(len(m["content"]) for m in messages) <= cap // 4
    ):  # at most 4 bytes a character: no encoding needed
        return messages, None
    sizes = [len(m["content"].encode("utf-8")) for m in messages]
    if sum(sizes) <= cap:
        return messages, None
    kept, left = [], cap
    for message, size in zip(messages, sizes, strict=True):
        content = message["content"]
        if size > left:  # cut at a byte boundary, dropping a split character
            content = content.encode("utf-8")[:left].decode("utf-8", "ignore")
        kept.append({**message, "content": content})
        left = max(left - size, 0)
    return kept, sum(sizes)


def _parse(items) -> tuple[list[Record], list[Issue]]:
    """Records from ``(origin, object or JSON text)`` pairs, and the issues of the bad ones."""
    records, issues = [], []
    for origin, item in items:
        try:
            obj = json.loads(item) if isinstance(item, str) else item
        except json.JSONDecodeError as exc:  # one line of a JSONL file: the column is the position
            issues.append(Issue(origin, f"invalid JSON ({exc.msg} at column {exc.colno})", "skipped"))
            continue
        except RecursionError:
            issues.append(Issue(origin, "invalid JSON (nested too deeply to parse)", "skipped"))
            continue
        try:
            messages, size = cap_record(to_messages(obj))
        except (ValueError, TypeError) as exc:
            issues.append(Issue(origin, str(exc), "skipped"))
            continue
        if size is not None:
            issues.append(
                Issue(
                    origin,
                    f"{size:,} bytes of text, over the cap of {MAX_RECORD_BYTES:,} "
                    "(prolora.data.readers.MAX_RECORD_BYTES); cut to the cap before tokenizing",
                    "truncated",
                )
            )
        records.append(Record(messages, origin))
    return records, issues


def _not_utf8(path: str) -> ValueError:
    """The error for a data file that is not UTF-8, naming the first bad line and byte."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return ValueError(
                    f"{path} line {lineno} is not UTF-8 text (byte {raw[exc.start : exc.start + 1]!r} at "
                    f"column {exc.start + 1}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
                )
    return ValueError(f"{path} is not UTF-8 text; save it as UTF-8")


def _binary(path: str, where: str) -> ValueError:
    return ValueError(
        f"{path} is not a text data file: it holds a NUL byte ({where}), as binary files do; pass a UTF-8 "
        ".jsonl file (one JSON record per line) or a .json array"
    )


def _jsonl_lines(path: str):
    with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of the first record
        try:
            for lineno, line in enumerate(f, start=1):
                if "\0" in line:
                    raise _binary(path, f"line {lineno}")
                if line.strip():
                    yield f"{path} line {lineno}", line
        except UnicodeDecodeError:  # a ValueError whose message names neither the file nor the fix
            raise _not_utf8(path) from None


def _json_array(path: str):
    with open(path, encoding="utf-8-sig") as f:
        try:
            text = f.read()
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    if "\0" in text:
        raise _binary(path, f"character {text.index(chr(0)) + 1}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); a .json data file holds one JSON array of "
            "records, a .jsonl file one record per line"
        ) from None
    except RecursionError:
        raise ValueError(
            f"{path} is not a usable JSON data file: it is nested too deeply to parse; a .json data file "
            "holds one JSON array of flat records"
        ) from None
    del text
    if not isinstance(data, list):
        raise ValueError(  # noqa: TRY004  (bad user input: reported as ValueError by prolora.cli)
            f"{path}: a .json data file must hold a JSON array of records; use .jsonl for one per line"
        )
    return ((f"{path}[{i}]", obj) for i, obj in enumerate(data))


def _hub_dataset(name: str):
    from datasets import load_dataset

    repo, _, split = name.partition(":")
    try:
        data = load_dataset(repo, split=split or "train")
    except Exception as exc:
        raise FileNotFoundError(
            f"{name!r} is not a local file, and loading it as a Hugging Face dataset failed ({exc}). Pass a "
            ".jsonl/.json path, or a dataset name as NAME[:SPLIT] when online."
        ) from exc
    return ((f"{name}[{i}]", row) for i, row in enumerate(data))


def embedded_path(split: str) -> str:
    """Path of the embedded data file of ``split`` (``"train"`` or ``"heldout"``)."""
    return str(resources.files("prolora.data").joinpath(EMBEDDED, _EMBEDDED_FILES[split]))


def read_source(source: str | None, split: str = "train") -> tuple[list[Record], list[Issue]]:
    """Read ``source`` (see the module docstring); returns ``(records, issues)``.

    Raises:
        FileNotFoundError: a path that does not exist and is not a loadable dataset name.
        ValueError: a ``.json`` file that is not a JSON array.
    """
    if source in (None, "", EMBEDDED):
        items = _jsonl_lines(embedded_path(split))
    elif os.path.isfile(source):
        items = _json_array(source) if source.endswith(".json") else _jsonl_lines(source)
    elif source.endswith((".jsonl", ".json")):
        raise FileNotFoundError(f"data file not found: {source}")
    else:
        items = _hub_dataset(source)
    return _parse(items)
