"""Where each benchmark's data lives, and readers for the standard file formats.

``--data-dir DIR`` expects the layout of the project's data folder (each benchmark's path can also be
given on its own, as a file or folder, or as ``hf:NAME`` for a Hugging Face dataset, see :mod:`.hub`)::

    DIR/mmlu/data/{dev,test}/<subject>_{dev,test}.csv   (hendrycks/test CSVs, no header)
    DIR/bbh/bbh/<task>.json + DIR/bbh/cot-prompts/<task>.txt   (suzgunmirac/BIG-Bench-Hard)
    DIR/gsm8k/test.jsonl                                 (openai/grade-school-math)
    DIR/tydiqa/{dev,train}/*.json                        (TyDi QA GoldP, SQuAD format)
    DIR/humaneval/HumanEval.jsonl.gz                     (openai/human-eval)

Readers return plain dicts; every missing or malformed file (not UTF-8, binary, invalid or too deeply
nested JSON, a broken CSV) raises :class:`DataError` naming the path and the flag that sets it. A UTF-8
byte-order mark at the start of a file is accepted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass
from pathlib import Path

BENCHMARKS = ("mmlu", "bbh", "gsm8k", "tydiqa", "humaneval")

# where each benchmark sits under --data-dir, and what the reader looks for there
_DEFAULT_LAYOUT = {
    "mmlu": "mmlu/data",
    "bbh": "bbh",
    "gsm8k": "gsm8k",
    "tydiqa": "tydiqa",
    "humaneval": "humaneval",
}
_EXPECTED = {
    "mmlu": "mmlu/data/test/<subject>_test.csv",
    "bbh": "bbh/bbh/<task>.json and bbh/cot-prompts/<task>.txt",
    "gsm8k": "gsm8k/test.jsonl",
    "tydiqa": "tydiqa/dev/*.json (and tydiqa/train/*.json)",
    "humaneval": "humaneval/HumanEval.jsonl.gz (or .jsonl)",
}


class DataError(FileNotFoundError):
    """A benchmark's data is missing or not in the expected format."""


def _fail(benchmark: str, problem: str) -> DataError:
    return DataError(
        f"{problem}. Set --{benchmark} PATH, or --data-dir DIR with {_EXPECTED[benchmark]} "
        f"inside it (layout: docs/eval.md)."
    )


@dataclass(frozen=True)
class DataSources:
    """One data source per benchmark: a local path or ``hf:NAME``; ``None`` when not configured."""

    mmlu: str | None = None
    bbh: str | None = None
    gsm8k: str | None = None
    tydiqa: str | None = None
    humaneval: str | None = None

    @classmethod
    def from_dir(cls, data_dir: str | None, **overrides: str | None) -> DataSources:
        """Sources under ``data_dir`` (standard layout), replaced by any non-``None`` override."""
        base = {
            name: str(Path(data_dir) / _DEFAULT_LAYOUT[name]) if data_dir else None for name in BENCHMARKS
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    def get(self, benchmark: str) -> str:
        """The source of ``benchmark``; raises :class:`DataError` when none is configured."""
        source = getattr(self, benchmark)
        if source is None:
            raise _fail(benchmark, f"no data configured for {benchmark}")
        return source


def _not_text(path: Path, benchmark: str, error: UnicodeDecodeError | None, where: str) -> DataError:
    if error is None:
        return _fail(benchmark, f"{path} is not text: it holds a NUL byte ({where}), as binary files do")
    # its own message names neither the file nor the fix
    byte = error.object[error.start : error.start + 1]
    return _fail(benchmark, f"{path} is not UTF-8 text (byte {byte!r} {where}); save it as UTF-8")


def _parse_json(text: str, path: Path, benchmark: str, where: str = ""):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(benchmark, f"{path}{where} is not valid JSON ({e})") from None
    except RecursionError:
        raise _fail(benchmark, f"{path}{where} is not usable JSON: nested too deeply to parse") from None


def _read_text(path: Path, benchmark: str) -> str:
    """The whole of a UTF-8 text file (a byte-order mark dropped)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_text(path, benchmark, e, f"at offset {e.start}") from None
    if "\0" in text:
        raise _not_text(path, benchmark, None, f"at character {text.index(chr(0)) + 1}")
    return text


def _read_json(path: Path, benchmark: str):
    return _parse_json(_read_text(path, benchmark), path, benchmark)


def _read_jsonl(path: Path, benchmark: str) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    number = 0
    try:
        with opener(path, "rt", encoding="utf-8-sig") as f:
            for number, line in enumerate(f, 1):
                if "\0" in line:
                    raise _not_text(path, benchmark, None, f"line {number}")
                if line.strip():
                    rows.append(_parse_json(line, path, benchmark, f" line {number}"))
    except UnicodeDecodeError as e:
        raise _not_text(path, benchmark, e, f"past line {number}") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise _fail(benchmark, f"{path} is not a readable gzip file ({e})") from None
    return rows


def _require_keys(rows: list[dict], keys: tuple[str, ...], path: Path, benchmark: str) -> list[dict]:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _fail(benchmark, f"{path}: record {i} is a JSON {type(row).__name__}, not an object")
        missing = [k for k in keys if k not in row]
        if missing:
            raise _fail(benchmark, f"{path}: record {i} lacks {missing} (expected keys {list(keys)})")
    return rows


def _existing(path: str, benchmark: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise _fail(benchmark, f"{what} not found: {p}")
    return p


# ---------------------------------------------------------------------------------------------- GSM8K


def read_gsm8k(path: str) -> list[dict]:
    """GSM8K test records ``{"question", "answer"}`` from ``test.jsonl`` (or a folder holding it)."""
    p = _existing(path, "gsm8k", "GSM8K test file")
    if p.is_dir():
        p = _existing(str(p / "test.jsonl"), "gsm8k", "GSM8K test file")
    return _require_keys(_read_jsonl(p, "gsm8k"), ("question", "answer"), p, "gsm8k")


# ------------------------------------------------------------------------------------------ HumanEval


def read_humaneval(path: str) -> list[dict]:
    """HumanEval problems (``task_id, prompt, entry_point, canonical_solution, test``) from
    ``HumanEval.jsonl[.gz]`` (or a folder holding it)."""
    p = _existing(path, "humaneval", "HumanEval file")
    if p.is_dir():
        candidates = [p / "HumanEval.jsonl.gz", p / "HumanEval.jsonl"]
        p = next((c for c in candidates if c.exists()), candidates[0])
        p = _existing(str(p), "humaneval", "HumanEval file")
    keys = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
    return _require_keys(_read_jsonl(p, "humaneval"), keys, p, "humaneval")


# ----------------------------------------------------------------------------------------------- MMLU


def _mmlu_split_dir(root: Path, split: str) -> Path:
    for candidate in (root / split, root / "data" / split):
        if candidate.is_dir():
            return candidate
    raise _fail("mmlu", f"MMLU folder {root} has no {split}/ (nor data/{split}/) subfolder")


def _read_mmlu_csv(path: Path) -> list[dict]:
    text = _read_text(path, "mmlu")
    rows = []
    try:
        for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), 1):
            if len(row) != 6 or row[5] not in ("A", "B", "C", "D"):
                raise _fail(
                    "mmlu",
                    f"{path} line {number}: expected 6 columns question,A,B,C,D,answer-letter "
                    f"(no header), got {row[:1]}... with {len(row)} columns",
                )
            rows.append({"question": row[0], "choices": row[1:5], "answer": row[5]})
    except csv.Error as e:  # e.g. a field over csv's 128 kB limit
        raise _fail("mmlu", f"{path} is not a readable CSV file ({e})") from None
    return rows


def read_mmlu(path: str) -> dict[str, list[dict]]:
    """MMLU test questions per subject, ``{subject: [{"question", "choices", "answer"}]}``, from the
    hendrycks CSV folders (``test/<subject>_test.csv``). Subjects are sorted."""
    test_dir = _mmlu_split_dir(_existing(path, "mmlu", "MMLU folder"), "test")
    files = sorted(test_dir.glob("*_test.csv"))
    if not files:
        raise _fail("mmlu", f"no <subject>_test.csv files in {test_dir}")
    return {f.name[: -len("_test.csv")]: _read_mmlu_csv(f) for f in files}


# ------------------------------------------------------------------------------------------------ BBH


def read_bbh(path: str) -> dict[str, dict]:
    """BBH tasks, ``{task: {"examples": [{"input", "target"}], "cot_prompt": str}}``, from
    ``bbh/<task>.json`` and ``cot-prompts/<task>.txt`` under ``path``. Tasks are sorted."""
    root = _existing(path, "bbh", "BBH folder")
    examples_dir, prompts_dir = root / "bbh", root / "cot-prompts"
    for d in (examples_dir, prompts_dir):
        if not d.is_dir():
            raise _fail("bbh", f"BBH folder {root} has no {d.name}/ subfolder")
    tasks = {}
    for f in sorted(examples_dir.glob("*.json")):
        prompt_file = prompts_dir / f"{f.stem}.txt"
        if not prompt_file.exists():
            raise _fail("bbh", f"BBH task {f.stem} has no prompt file {prompt_file}")
        data = _read_json(f, "bbh")
        examples = _require_keys(
            data.get("examples", []) if isinstance(data, dict) else [], ("input", "target"), f, "bbh"
        )
        tasks[f.stem] = {"examples": examples, "cot_prompt": _read_text(prompt_file, "bbh")}
    if not tasks:
        raise _fail("bbh", f"no <task>.json files in {examples_dir}")
    return tasks


# -------------------------------------------------------------------------------------------- TyDi QA


def squad_records(data: dict, path: Path) -> list[dict]:
    """Flatten a SQuAD-format dict into ``{"id", "language", "context", "question", "answers"}`` records;
    the language is the prefix of the question id (``english--123-4`` -> ``english``)."""
    try:
        return [
            {
                "id": qa["id"],
                "language": qa["id"].split("-")[0],
                "context": paragraph["context"],
                "question": qa["question"],
                "answers": [a["text"] for a in qa["answers"]],
            }
            for article in data["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        ]
    except (KeyError, TypeError) as e:
        raise _fail("tydiqa", f"{path} is not SQuAD format (data/paragraphs/qas; missing {e})") from e


def _read_squad_dir(directory: Path) -> dict[str, list[dict]]:
    by_language: dict[str, list[dict]] = {}
    for f in sorted(directory.glob("*.json")):
        for record in squad_records(_read_json(f, "tydiqa"), f):
            by_language.setdefault(record["language"], []).append(record)
    return by_language


def read_tydiqa(path: str) -> dict[str, dict[str, list[dict]]]:
    """TyDi QA GoldP per language, ``{language: {"dev": [...], "train": [...]}}`` (``train`` may be
    empty), from every SQuAD-format ``*.json`` in ``dev/`` and ``train/`` under ``path``."""
    root = _existing(path, "tydiqa", "TyDi QA folder")
    dev_dir = root / "dev"
    if not dev_dir.is_dir():
        raise _fail("tydiqa", f"TyDi QA folder {root} has no dev/ subfolder")
    dev = _read_squad_dir(dev_dir)
    if not dev:
        raise _fail("tydiqa", f"no SQuAD-format *.json files in {dev_dir}")
    train = _read_squad_dir(root / "train") if (root / "train").is_dir() else {}
    return {lang: {"dev": dev[lang], "train": train.get(lang, [])} for lang in sorted(dev)}


READERS = {
    "mmlu": read_mmlu,
    "bbh": read_bbh,
    "gsm8k": read_gsm8k,
    "tydiqa": read_tydiqa,
    "humaneval": read_humaneval,
}
