"""Bad command-line values found by hostile testing: one line naming the value and the fix, exit 2, nothing
written (and for flags, before any model loads)."""

from __future__ import annotations

import pytest

from prolora.cli import main


@pytest.mark.parametrize("command", ["generate", "chat"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens 0 must be at least 1"),  # was transformers' message,
        (["--max-new-tokens", "-5"], "--max-new-tokens -5 must be at least 1"),  # after the model loaded
        (["--temperature", "-1"], "--temperature -1.0 must be a finite number"),  # was silently greedy
        (["--temperature", "nan"], "--temperature nan must be a finite number"),  # was silently greedy
    ],
)
def test_bad_generation_flags(command, flags, message, capsys, tmp_path):
    argv = [command, "hi"] if command == "generate" else [command]
    assert main([*argv, "--model", str(tmp_path / "never-loaded"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"prolora {command}: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        (
            "latin1.jsonl",
            b'{"messages": []}\n{"text": "caf\xe9"}\n',
            "line 2 is not UTF-8 text (byte b'\\xe9' at column 14)",
        ),
        ("first.jsonl", b"\xff\xfe{}\n", "line 1 is not UTF-8 text (byte b'\\xff' at column 1)"),
        (
            "array.json",
            b'[{"messages": []}, "\xff"]',
            "line 1 is not UTF-8 text (byte b'\\xff' at column 21)",
        ),
    ],
)
def test_a_data_file_that_is_not_utf8_is_named_with_its_line_and_the_fix(tmp_path, capsys, name, data, where):
    # before: "prolora train: error: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    from serve_utils import save_model

    (tmp_path / name).write_bytes(data)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(save_model(tmp_path / "model")),
                "--data",
                str(tmp_path / name),
                "--output-dir",
                str(out),
                "--max-steps",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{name} {where}" in err and "save the file as UTF-8" in err and "Traceback" not in err
    assert not out.exists()


def test_a_benchmark_file_that_is_not_utf8_is_named(tmp_path, capsys):
    # before: "prolora eval: error: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    (tmp_path / "he.jsonl").write_bytes(b'{"task_id": "\xff"}\n')
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval",
                "--tasks",
                "humaneval",
                "--humaneval",
                str(tmp_path / "he.jsonl"),
                "--predictions",
                str(tmp_path / "he.jsonl"),
                "--output-dir",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "he.jsonl is not UTF-8 text (byte b'\\xff'" in err and "save it as UTF-8" in err
    assert not out.exists()


def _train_argv(tmp_path, data) -> list[str]:
    return ["train", "--data", str(data), "--output-dir", str(tmp_path / "run"), "--max-steps", "1"]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        # before: RecursionError traceback, exit 1
        ("deep.json", b"[" * 100_000, "deep.json is not a usable JSON data file: it is nested too deeply"),
        # before: every line skipped as invalid JSON, only after the model had loaded
        (
            "deep.jsonl",
            b"[" * 100_000 + b"\n",
            "deep.jsonl line 1: invalid JSON (nested too deeply to parse)",
        ),
        ("zeros.jsonl", b"\0" * 4096, "zeros.jsonl is not a text data file: it holds a NUL byte (line 1)"),
        ("zeros.json", b"[" + b"\0" * 4096, "zeros.json is not a text data file: it holds a NUL byte"),
        ("bad.json", b'[{"messages": ', "bad.json is not valid JSON"),
    ],
    ids=["deep-json", "deep-jsonl", "binary-jsonl", "binary-json", "malformed-json"],
)
def test_malformed_deep_or_binary_data_is_refused_before_any_model_loads(
    tmp_path, capsys, monkeypatch, name, data, message
):
    import prolora.base_models

    def never(*args, **kwargs):
        raise AssertionError("the model or tokenizer loaded before the data was checked")

    monkeypatch.setattr(prolora.base_models, "load_tokenizer", never)
    monkeypatch.setattr(prolora.base_models, "load_base_model", never)
    (tmp_path / name).write_bytes(data)
    assert main(_train_argv(tmp_path, tmp_path / name)) == 2
    err = capsys.readouterr().err
    assert err.startswith("prolora train: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("test.jsonl", b"[" * 100_000 + b"\n", "test.jsonl line 1 is not usable JSON: nested too deeply"),
        ("test.jsonl", b"\0" * 100, "test.jsonl is not text: it holds a NUL byte (line 1)"),
        ("test.jsonl", b'"just a string"\n', "test.jsonl: record 0 is a JSON str, not an object"),
    ],
    ids=["deep", "binary", "not-an-object"],
)
def test_a_deep_binary_or_non_object_benchmark_file_is_refused(tmp_path, capsys, name, data, message):
    (tmp_path / name).write_bytes(data)
    argv = ["eval", "--tasks", "gsm8k", "--gsm8k", str(tmp_path / name), "--output-dir", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "--gsm8k PATH" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_eval_loss_data_is_read_and_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import prolora.eval.runner

    def never(*args, **kwargs):
        raise AssertionError("the model loaded before --loss-data was checked")

    monkeypatch.setattr(prolora.eval.runner, "load", never)
    (tmp_path / "deep.json").write_bytes(b"[" * 100_000)
    argv = ["eval", "--tasks", "none", "--loss-data", str(tmp_path / "deep.json")]
    assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert (
        "deep.json is not a usable JSON data file: it is nested too deeply" in err and "Traceback" not in err
    )
