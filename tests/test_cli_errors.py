"""Bad command-line input ends in one line naming the value and the fix (exit 2), before any model loads."""

from __future__ import annotations

import pytest

from prolora.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--lr", "-1"], "learning_rate=-1.0 must be positive"),
        (["train", "--lora-alpha", "-16"], "lora_alpha=-16.0 must be positive"),
        (["train", "--lora-dropout", "1.5"], "lora_dropout=1.5 must be in [0, 1)"),
        (["train", "--max-grad-norm", "-1"], "max_grad_norm=-1.0 must be at least 0"),
        (
            ["eval", "--limit", "0", "--tasks", "gsm8k", "--data-dir", ".", "--output-dir", "/nonexistent/o"],
            "limit must be at least 1, got 0",
        ),
        (["compare", "--seeds", "a"], "--seeds 'a': give comma-separated integers"),
        (["compare", "--groups", ","], "names no group"),
        (["compare", "--max-steps", "0"], "max_steps=0 must be at least 1"),
    ],
)
def test_bad_flags(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"prolora {argv[0]}: error:" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "r: [8\n", "is not valid YAML"),
        ("bad.json", "{r: 8}", "is not valid JSON"),
        ("list.yaml", "- 1\n", "must be a mapping"),
        ("types.yaml", "r: '8'\n", "r='8' must be int like the default 8"),
        ("flag.yaml", "resume: 'yes'\n", "resume='yes' must be bool"),
    ],
)
def test_bad_train_config_files(tmp_path, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    assert main(["train", "--config", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_json_data_file_that_is_not_an_array(tmp_path):
    from prolora.data.readers import read_source

    (tmp_path / "obj.json").write_text('{"messages": []}')
    with pytest.raises(ValueError, match="must hold a JSON array of records"):
        read_source(str(tmp_path / "obj.json"))


def test_failed_setup_leaves_no_run_directory(tmp_path, capsys):
    """A run that fails before training (here: its data file is missing) removes the directory it made."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "missing.jsonl"), "--output-dir", str(out)]) == 2
    assert "data file not found" in capsys.readouterr().err
    assert not out.exists()


def test_version_flag(capsys):
    from importlib import metadata

    from prolora.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert (
        exit_.value.code == 0 and capsys.readouterr().out.strip() == f"prolora {metadata.version('prolora')}"
    )
