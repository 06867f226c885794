"""Generation and chat (``prolora.inference.generation``, ``prolora chat``) over adapters trained by
``prolora train`` on the tiny Llama of test_train.py: named adapters, the base model, switching, stdin chat.
"""

from __future__ import annotations

import pytest
from test_train import config, save_tiny

from prolora.train import train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model_dir, data_file)`` of test_train.py's tiny Llama and conversations."""
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def test_generate_with_named_adapters_and_base(tiny, tmp_path):
    from prolora.inference.generation import load_generator

    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    train(config(tiny, a, max_steps=2, heldout_size=0, learning_rate=1e-2))
    train(config(tiny, b, max_steps=2, heldout_size=0, method="rolora"))
    train(config(tiny, c, max_steps=2, heldout_size=0, method="lora"))
    with pytest.raises(ValueError, match="different peft types"):  # one PeftModel holds one adapter type
        load_generator(None, [str(a), str(c)], None)
    generator = load_generator(None, [str(a), f"second={b}"], None)
    assert generator.adapters == ["a", "second"] and generator.active == "a"
    messages = [{"role": "user", "content": "What is 3 plus 4?"}]
    first = generator.reply(messages, max_new_tokens=5)
    assert 0 < first.new_tokens <= 5 and first.tokens_per_s > 0
    assert generator.reply(messages, max_new_tokens=5).text == first.text  # greedy: deterministic
    generator.use(None)
    assert generator.active is None and generator.reply(messages, max_new_tokens=5).new_tokens > 0
    generator.use("second")
    assert generator.active == "second" and generator.reply(messages, max_new_tokens=5).new_tokens > 0
    with pytest.raises(ValueError, match="no adapter named 'c'; loaded: a, second"):
        generator.use("c")


def test_chat_reads_turns_and_commands_from_stdin(tiny, tmp_path, monkeypatch, capsys):
    import argparse
    import io

    from prolora.cli import chat as chat_cmd

    run = tmp_path / "run"
    train(config(tiny, run, max_steps=1, heldout_size=0))
    parser = argparse.ArgumentParser()
    chat_cmd.add_arguments(parser)
    args = parser.parse_args(["--adapter", str(run), "--max-new-tokens", "3"])
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("What is 1 plus 2?\n/use nope\n/use base\nAnd 2 plus 2?\n/exit\n")
    )
    capsys.readouterr()
    assert chat_cmd.run(args) == 0
    captured = capsys.readouterr()
    assert captured.err.count("tokens/s]") == 2 and "no adapter named 'nope'; loaded: run" in captured.err
