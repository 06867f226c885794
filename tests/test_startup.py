"""Start-up: ``import prolora`` and the command's help and argument errors load no torch, and PRoLoRA is
still registered with PEFT whenever PEFT is there (before or after ``import prolora``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "transformers", "peft", "datasets")


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this one has torch loaded already)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["train", "--no-such-flag"],
        ["trian"],
        ["params", "--help"],
        ["eval", "--help"],
        ["compare", "--help"],
        ["vllm", "base-model", "--help"],
    ],
)
def test_help_and_argument_errors_load_no_torch(argv):
    result = run_python(f"""
        import sys
        from prolora.cli import main
        try:
            main({argv!r})
        except SystemExit as exit:
            print("exit", exit.code)
        print("heavy", sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert "heavy []" in result.stdout, result.stdout + result.stderr
    assert ("exit 0" if "--help" in argv else "exit 2") in result.stdout
    if "--help" not in argv:
        assert "error:" in result.stderr


def test_train_help_lists_flags_without_internal_names():
    result = run_python("from prolora.cli import main\nmain(['train', '--help'])")
    assert "--threads" in result.stdout and "--micro-batch-size" in result.stdout
    assert "DEFAULT_STEPS_REASON" not in result.stdout


@pytest.mark.parametrize("order", ["prolora first", "peft first", "tuner module", "attribute"])
def test_peft_knows_prolora_whatever_the_import_order(order):
    code = {
        "prolora first": "import prolora, sys\nassert 'torch' not in sys.modules\nimport peft",
        "peft first": "import peft\nimport prolora",
        "tuner module": "import prolora.tuner.config\nimport peft",
        "attribute": "import prolora\nprolora.PRoLoRAConfig\nimport peft",
    }[order]
    result = run_python(
        code
        + """
        from peft import mapping
        print(mapping.PEFT_TYPE_TO_CONFIG_MAPPING["PROLORA"].__name__,
              mapping.PEFT_TYPE_TO_TUNER_MAPPING["PROLORA"].__name__,
              any(str(k).endswith("TIED_LORA") for k in mapping.PEFT_TYPE_TO_CONFIG_MAPPING),
              peft.__spec__.loader.__class__.__name__)
    """.replace("\n        ", "\n")
    )
    assert result.stdout.split() == ["PRoLoRAConfig", "PRoLoRAModel", "True", "SourceFileLoader"], (
        result.stderr
    )


def test_public_names_load_on_first_use():
    result = run_python("""
        import sys, prolora
        print(sorted(prolora.__all__) == sorted(n for n in dir(prolora) if n in prolora.__all__))
        print(prolora.get_prolora_model.__module__, prolora.export_lora.__module__)
        try:
            prolora.no_such_name
        except AttributeError as error:
            print("AttributeError", error)
    """)
    lines = result.stdout.splitlines()
    assert lines[:2] == ["True", "prolora.tuner.model prolora.format.export"], result.stderr
    assert lines[2].startswith("AttributeError") and "no_such_name" in lines[2]
