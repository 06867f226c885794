"""Training: outputs, resume equality, interrupt, configuration, DDP on two CPU processes.

Runs on a tiny random Llama with a tiny byte-level BPE tokenizer, both saved to a temporary directory
so that subprocesses (torchrun) load them like any local model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama

from prolora.train import TrainConfig, train
from prolora.train.config import add_config_arguments, parse_target_modules, resolve_config
from prolora.train.trainer import JsonlLogCallback


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model_dir, data_file)``: a saved tiny Llama + tokenizer, and 96 short arithmetic conversations."""
    return save_tiny(tmp_path_factory.mktemp("tiny"))


def save_tiny(root: Path) -> tuple[str, str]:
    """Save the tiny Llama, its byte-level BPE tokenizer and the conversations in ``root``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    records = [
        {
            "messages": [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}."},
            ]
        }
        for a in range(12)
        for b in range(8)
    ]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["<|user|>\n<|assistant|>\n"] + [m["content"] for r in records for m in r["messages"]]
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=320,
            special_tokens=["<pad>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="<pad>")
    model_dir = root / "model"
    make_tiny_llama(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir), str(data)


def config(tiny, out, **overrides) -> TrainConfig:
    model, data = tiny
    values = {
        "model": model,
        "data": data,
        "output_dir": str(out),
        "max_steps": 6,
        "batch_size": 4,
        "micro_batch_size": 2,
        "max_length": 64,
        "heldout_size": 8,
        "logging_steps": 1,
        "save_steps": 3,
    }
    return TrainConfig(**{**values, **overrides})


def adapter_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "adapter_model.safetensors"))


def steps_logged(run_dir) -> list[int]:
    with open(os.path.join(run_dir, "train_log.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["step"] for line in f]


def test_train_writes_adapter_config_log_and_summary(tiny, tmp_path):
    out = tmp_path / "run"
    summary = train(config(tiny, out, learning_rate=1e-2, threads=1))
    assert sorted(os.listdir(out)) == [
        "adapter",
        "checkpoint-3",
        "checkpoint-6",
        "run_config.json",
        "summary.json",
        "train_log.jsonl",
    ]
    assert json.loads((out / "summary.json").read_text()) == pytest.approx(summary)
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["method"] == "prolora" and run_config["gradient_accumulation_steps"] == 2
    assert run_config["threads_resolved"] == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "learning_rate", "grad_norm", "train_tokens_per_second"} <= set(e) for e in log)
    assert summary["steps"] == 6 and summary["interrupted"] is None and summary["world_size"] == 1
    assert summary["trainable_params"] < summary["lora_same_rank_params"]
    assert summary["adapter_file_bytes"] == os.path.getsize(out / "adapter" / "adapter_model.safetensors")
    assert summary["heldout_examples"] == 8
    assert summary["heldout_loss_adapter"] < summary["heldout_loss_base"]
    assert summary["tokens_per_s"] > 0 and summary["train_tokens"] > 0


def test_resume_reaches_the_same_adapter(tiny, tmp_path):
    full = tmp_path / "full"
    train(config(tiny, full))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")  # what an interrupted run leaves
    summary = train(config(tiny, resumed, resume=True))
    assert summary["steps"] == 6 and steps_logged(resumed) == [4, 5, 6]  # trained from the checkpoint on
    a, b = adapter_tensors(str(full / "adapter")), adapter_tensors(str(resumed / "adapter"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("where", ["between micro-batches", "within a micro-batch"])
def test_sigint_saves_adapter_and_checkpoint_then_resume_finishes(tiny, tmp_path, monkeypatch, where):
    from prolora.train.trainer import CheckpointTrainer

    on_log, compute_loss = JsonlLogCallback.on_log, CheckpointTrainer.compute_loss

    def interrupt_after_step_2(self, args, state, control, logs=None, **kwargs):
        on_log(self, args, state, control, logs=logs, **kwargs)
        if state.global_step == 2 and logs and "loss" in logs:  # once: the step's log line, not the run's
            signal.raise_signal(signal.SIGINT)

    def interrupt_in_step_3(self, *args, **kwargs):  # the signal comes during step 3's first forward
        if self.state.global_step == 2:
            signal.raise_signal(signal.SIGINT)
        return compute_loss(self, *args, **kwargs)

    if where == "between micro-batches":
        monkeypatch.setattr(JsonlLogCallback, "on_log", interrupt_after_step_2)
    else:
        monkeypatch.setattr(CheckpointTrainer, "compute_loss", interrupt_in_step_3)
    # what the handlers were before: not always Python's defaults (a runner may start the suite with SIGINT
    # ignored, as a background process is)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    out = tmp_path / "run"
    summary = train(config(tiny, out, save_steps=100))
    # step 3 is abandoned and discarded; the last finished step (2) is checkpointed and logged
    assert summary["interrupted"] == "SIGINT" and summary["steps"] == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert steps_logged(out) == [1, 2]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    tokens_at_2 = state["log_history"][-1]["num_input_tokens_seen"]
    assert summary["train_tokens"] == state["num_input_tokens_seen"] == tokens_at_2  # none of step 3's
    assert {sig: signal.getsignal(sig) for sig in before} == before  # handlers restored
    monkeypatch.undo()
    assert train(config(tiny, out, save_steps=100, resume=True))["steps"] == 6
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]
    # the discarded micro-batch left no trace: the same adapter as a run never interrupted
    full = tmp_path / "full"
    train(config(tiny, full, save_steps=100))
    a, b = adapter_tensors(str(full / "adapter")), adapter_tensors(str(out / "adapter"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)


def test_sigterm_stops_a_cli_run_within_a_micro_batch_and_leaves_a_resumable_checkpoint(tiny, tmp_path):
    """A real SIGTERM to ``prolora train`` in a subprocess, mid-run: exit 130 with the checkpoint of the last
    finished step, which ``--resume`` continues to the end."""
    import time

    model, data = tiny
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "prolora.cli", "train", "--model", model, "--data", data]
    # 12 steps of 8 micro-batches: about 1 s a step here, so the signal after the third comes mid-run
    argv += ["--output-dir", str(out), "--max-steps", "12", "--batch-size", "8", "--micro-batch-size", "1"]
    argv += ["--max-length", "64", "--heldout-size", "0", "--logging-steps", "1", "--save-steps", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "train_log.jsonl").is_file() or len(steps_logged(out)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "SIGTERM received: stopping after this micro-batch" in err and "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert summary["interrupted"] == "SIGTERM" and 3 <= steps < 12
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{steps}"]
    assert steps_logged(out)[-1] == steps
    resumed = train(
        config(
            tiny,
            out,
            max_steps=12,
            batch_size=8,
            micro_batch_size=1,
            heldout_size=0,
            save_steps=1000,
            resume=True,
        )
    )
    assert resumed["steps"] == 12 and resumed["interrupted"] is None


def test_existing_checkpoints_need_resume_and_resume_needs_checkpoints(tiny, tmp_path):
    (tmp_path / "old" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="checkpoint-2; pass --resume"):
        train(config(tiny, tmp_path / "old"))
    with pytest.raises(FileNotFoundError, match="no checkpoint-N directory"):
        train(config(tiny, tmp_path / "empty", resume=True))


def parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    return resolve_config(parser.parse_args(argv))


def test_defaults_are_appendix_a2():
    c = TrainConfig()
    assert (c.method, c.r, c.unshared_r, c.sharing_rate_a, c.sharing_rate_b) == ("prolora", 8, 1, 7, 7)
    assert (c.lora_alpha, c.lora_dropout, c.target_modules) == (16, 0.1, "all-linear")
    assert (c.batch_size, c.max_length, c.learning_rate, c.weight_decay, c.max_grad_norm) == (
        16,
        512,
        2e-4,
        0,
        0.3,
    )
    assert (c.lr_scheduler, c.warmup_ratio, c.group_by_length) == ("linear", 0.03, True)


def test_micro_batch_size_does_not_change_the_step(tiny, tmp_path):
    """The default micro-batch of 1 (the run's peak memory) reaches the adapter of one 4-example forward: the
    Trainer normalises the loss over the whole batch, and the sampler groups whole batches."""
    runs = {
        mb: adapter_tensors(
            train(
                config(
                    tiny,
                    tmp_path / f"mb{mb}",
                    micro_batch_size=mb,
                    lora_dropout=0.0,
                    learning_rate=1e-2,
                    max_steps=3,
                    heldout_size=0,
                )
            )["adapter_dir"]
        )
        for mb in (1, 4)
    }
    assert runs[1].keys() == runs[4].keys()
    for name, tensor in runs[4].items():
        torch.testing.assert_close(runs[1][name], tensor, rtol=1e-4, atol=1e-6)
    assert any(t.abs().sum() > 0 for name, t in runs[1].items() if "B" in name)  # it did train
    assert TrainConfig().micro_batch_size == 1


def test_three_step_summary_comes_from_totals(tiny, tmp_path):
    """Logging every 5 steps, a 3-step run logs steps 1 and 3 (the last step always): its summary is the
    mean over all three steps and the run's own tokens / time, not step 1's figures."""
    every = train(config(tiny, tmp_path / "every", max_steps=3, logging_steps=1, heldout_size=0))
    sparse = train(config(tiny, tmp_path / "sparse", max_steps=3, logging_steps=5, heldout_size=0))
    per_step = [
        e["loss"] for e in map(json.loads, (tmp_path / "every" / "train_log.jsonl").read_text().splitlines())
    ]
    assert len(per_step) == 3 and steps_logged(tmp_path / "sparse") == [1, 3]
    for summary in (every, sparse):
        assert summary["train_loss_mean"] == pytest.approx(sum(per_step) / 3, rel=1e-4)
        assert summary["session_steps"] == summary["steps"] == 3
        assert summary["session_tokens"] == summary["train_tokens"] > 0
        assert summary["tokens_per_s"] == pytest.approx(summary["train_tokens"] / summary["train_time_s"])
    assert sparse["train_loss_final"] == pytest.approx((per_step[1] + per_step[2]) / 2, rel=1e-4)
    assert sparse["train_loss_final_steps"] == 2 and every["train_loss_final_steps"] == 1


def test_heldout_loss_is_token_weighted_and_the_same_for_every_seed(tiny, tmp_path):
    """The summary's held-out losses average the NLL over every assistant token of the split (an independent
    per-example reference through the model's own loss), so the base model's loss does not move with the
    seed (the Trainer's mean of per-batch means over seeded length-grouped batches did)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prolora.data import load_splits

    model_dir, data = tiny
    lines = Path(data).read_text().splitlines(keepends=True)
    heldout = tmp_path / "heldout.jsonl"  # lengths differ, so batch composition would matter
    heldout.write_text("".join(lines[i] for i in (0, 95, 13, 50, 7, 88, 31)))
    runs = [
        train(
            config(
                tiny,
                tmp_path / f"seed{seed}",
                max_steps=3,
                seed=seed,
                learning_rate=1e-2,
                heldout_data=str(heldout),
                heldout_size=None,
            )
        )
        for seed in (1, 2)
    ]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    examples = load_splits(tokenizer, data, str(heldout), None, 64).heldout
    total = tokens = 0
    with torch.no_grad():
        for row in examples:
            count = sum(label != -100 for label in row["labels"][1:])
            loss = base(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
            total, tokens = total + loss.item() * count, tokens + count
    for summary in runs:
        assert summary["heldout_examples"] == 7 and summary["heldout_tokens"] == tokens
        assert summary["heldout_loss_base"] == pytest.approx(total / tokens, rel=1e-5)
    assert runs[0]["heldout_loss_adapter"] != runs[1]["heldout_loss_adapter"]  # the seeds trained differently


def test_small_data_trains_with_an_adapted_heldout_split(tiny, tmp_path, capsys):
    model, data = tiny
    small = tmp_path / "small.jsonl"
    small.write_text("".join(Path(data).read_text().splitlines(keepends=True)[:30]))
    summary = train(config((model, str(small)), tmp_path / "run", max_steps=1, heldout_size=None))
    assert summary["heldout_examples"] == 3 and summary["heldout_loss_adapter"] is not None
    captured = capsys.readouterr()
    assert "held-out  : 3 drawn out of the data" in captured.out
    # the held-out scoring after training shows its progress (before: minutes of silence on the default run)
    for which in ("base", "adapter"):
        assert f"held-out loss, {which}: 100%" in captured.err and "3/3 [" in captured.err
    assert "example/s]" in captured.err


def test_flags_override_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: lora\nr: 4\nlearning_rate: 0.001\ntarget_modules: [q_proj, v_proj]\n")
    cfg = parse(["--config", str(path), "--r", "2", "--u", "0", "--m", "4", "--no-group-by-length"])
    assert (cfg.method, cfg.r, cfg.learning_rate, cfg.unshared_r, cfg.sharing_rate_a) == (
        "lora",
        2,
        1e-3,
        0,
        4,
    )
    assert cfg.target_modules == ["q_proj", "v_proj"] and cfg.group_by_length is False
    assert (cfg.sharing_rate_b, cfg.lora_alpha) == (7, 16)  # untouched fields keep their defaults
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps({"lr": 1}))
    with pytest.raises(ValueError, match=r"unknown keys \['lr'\]"):
        parse(["--config", str(json_path)])


# The flags of `prolora train` as they were when they were generated from annotation strings (captured from
# that parser before it was rebuilt from the fields' real types): option strings -> value type ("bool": --x
# and --no-x). A field added to TrainConfig adds its flag here.
TRAIN_FLAGS = {
    ("--config",): "str",
    ("--model",): "str",
    ("--method",): "str",
    ("--r",): "int",
    ("--unshared-r", "--u"): "int",
    ("--sharing-rate-a", "--m"): "int",
    ("--sharing-rate-b", "--n"): "int",
    ("--lora-alpha",): "float",
    ("--use-rslora", "--no-use-rslora"): "bool",
    ("--lora-dropout",): "float",
    ("--target-modules",): "str",
    ("--quantization",): "str",
    ("--gradient-checkpointing", "--no-gradient-checkpointing"): "bool",
    ("--threads",): "int",
    ("--data",): "str",
    ("--heldout-data",): "str",
    ("--heldout-size",): "int",
    ("--chat-format",): "str",
    ("--max-length",): "int",
    ("--max-steps",): "int",
    ("--batch-size",): "int",
    ("--micro-batch-size",): "int",
    ("--learning-rate", "--lr"): "float",
    ("--lr-shared-scale",): "float",
    ("--lr-scheduler",): "str",
    ("--warmup-ratio",): "float",
    ("--weight-decay",): "float",
    ("--max-grad-norm",): "float",
    ("--group-by-length", "--no-group-by-length"): "bool",
    ("--optim",): "str",
    ("--seed",): "int",
    ("--output-dir",): "str",
    ("--logging-steps",): "int",
    ("--save-steps",): "int",
    ("--save-total-limit",): "int",
    ("--resume", "--no-resume"): "bool",
}


def test_train_flags_are_the_fields_with_their_types_and_no_forms():
    import argparse

    from prolora.data.chat import CHAT_FORMATS
    from prolora.method_presets import METHODS
    from prolora.train.config import QUANTIZATION

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    actions = [a for a in parser._actions if a.option_strings != ["-h", "--help"]]
    found = {
        tuple(a.option_strings): "bool"
        if isinstance(a, argparse.BooleanOptionalAction)
        else (a.type or str).__name__
        for a in actions
    }
    assert found == TRAIN_FLAGS
    choices = {a.dest: a.choices for a in actions if a.choices}
    assert choices == {"method": METHODS, "quantization": QUANTIZATION, "chat_format": CHAT_FORMATS}
    assert all(a.default is argparse.SUPPRESS for a in actions if a.dest != "config")  # unset unless given
    # each flag reaches its field with the field's type; --no-x turns a default-on switch off
    given = parse(["--u", "2", "--lr", "1e-3", "--threads", "3", "--heldout-size", "0", "--lora-alpha", "8"])
    assert (given.unshared_r, given.learning_rate, given.threads, given.heldout_size) == (2, 1e-3, 3, 0)
    assert type(given.lora_alpha) is float and given.lora_alpha == 8.0
    assert parse(["--no-group-by-length", "--use-rslora", "--resume"]).group_by_length is False
    assert parse(["--group-by-length"]).group_by_length is True and parse([]).use_rslora is False
    assert parse(["--target-modules", "q_proj,v_proj"]).target_modules == ["q_proj", "v_proj"]
    with pytest.raises(SystemExit):
        parse(["--r", "2.5"])  # an int field refuses a float on the command line


def test_a_field_of_a_type_with_no_flag_is_refused_when_the_parser_is_built():
    from prolora.train.config import _flag_type

    assert (_flag_type(int | None), _flag_type(str | list), _flag_type(bool), _flag_type(float)) == (
        int,
        str,
        None,
        float,
    )
    with pytest.raises(TypeError, match="no command-line flag type"):
        _flag_type(dict | None)


def test_bad_values_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match="batch_size=16 is not a multiple of micro_batch_size=5"):
        TrainConfig(micro_batch_size=5)
    with pytest.raises(ValueError, match="method='dora' is not one of"):
        TrainConfig(method="dora")
    for bad, message in (  # config files bypass argparse: every check of validate answers them
        ({"r": "8"}, "r='8' must be int like the default 8"),
        ({"learning_rate": 0}, r"learning_rate=0 must be positive \(App. A.2"),
        ({"lora_dropout": 1.0}, r"lora_dropout=1.0 must be in \[0, 1\)"),
        ({"weight_decay": -1.0}, "weight_decay=-1.0 must be at least 0"),
        ({"max_steps": 0}, "max_steps=0 must be at least 1"),
        ({"threads": True}, "threads=True must be a whole number ≥ 1, or unset"),
        ({"heldout_size": -1}, "heldout_size=-1 must be a whole number ≥ 0, or unset"),
        ({"save_total_limit": -1}, "save_total_limit=-1 must be at least 0"),
        ({"sharing_rate_b": 0}, r"sharing_rate_b=0 must be at least 1 \(number of chunks\)"),
        ({"unshared_r": 9}, "unshared_r=9 exceeds r=8"),
        ({"lr_shared_scale": 0.0}, "lr_shared_scale=0.0 must be positive"),
        ({"warmup_ratio": 1.0}, r"warmup_ratio=1.0 must be in \[0, 1\)"),
        ({"use_rslora": "yes"}, "use_rslora='yes' must be bool"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)
    assert parse_target_modules("q_proj, v_proj") == ["q_proj", "v_proj"]
    assert parse_target_modules(r".*\.(q|v)_proj") == r".*\.(q|v)_proj"


def test_ddp_two_cpu_processes_keep_identical_adapters(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "prolora.cli",
        "train",
        "--model",
        model,
        "--data",
        data,
        "--output-dir",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "1",
        "--max-length",
        "64",
        "--heldout-size",
        "8",
        "--save-steps",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["adapter_identical_across_ranks"] is True
    assert summary["steps"] == 3 and (out / "checkpoint-2" / "rng_state_1.pth").is_file()
    assert json.loads((out / "run_config.json").read_text())["gradient_accumulation_steps"] == 2


def test_nf4_base_trains_every_adapter_layer_even_after_an_eval_forward(tiny, tmp_path):
    from prolora.train.run import load_base_model

    base = load_base_model(tiny[0], "nf4")
    base.eval()
    with torch.no_grad():  # the bitsandbytes CPU trap: an eval-mode forward before training
        base(input_ids=torch.tensor([[1, 2, 3]]))
    out = tmp_path / "nf4"
    summary = train(config(tiny, out, max_steps=2, learning_rate=1e-2, quantization="nf4"), base_model=base)
    assert summary["quantization"] == "nf4"
    assert summary["lora_same_rank_params"] == 8 * 2 * (
        96 + 64 + 64 + 96 + 128 + 128 + 128
    )  # r·Σ(h+o), 4-bit layers
    b_tensors = {k: v for k, v in adapter_tensors(str(out / "adapter")).items() if "_B" in k}
    assert len(b_tensors) == 28  # B_0 and B_u of 7 projections × 2 layers; all start at zero
    assert all(v.abs().sum() > 0 for v in b_tensors.values())


@pytest.mark.parametrize(
    "method, expected",
    [
        ("lora", {"r": 8}),
        (
            "prolora",
            {
                "r": 8,
                "unshared_r": 1,
                "sharing_rate_a": 7,
                "sharing_rate_b": 7,
                "rotation": True,
                "init": "rectified",
            },
        ),
        ("clora", {"unshared_r": 0, "rotation": False}),
        ("rolora", {"unshared_r": 0, "rotation": True}),
        ("prolora-r", {"unshared_r": 1, "rotation": False}),
        ("prolora-i", {"unshared_r": 1, "rotation": True, "init": "vanilla"}),
    ],
)
def test_method_presets(method, expected):
    from prolora.method_presets import make_adapter_config

    cfg = make_adapter_config(method)
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert (cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules) == (16, 0.1, "all-linear")
    with pytest.raises(ValueError, match="unknown method 'dora'; choose one of prolora, lora"):
        make_adapter_config("dora")


def test_train_help_lists_the_flags(capsys):
    from prolora.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(
        flag in text for flag in ("--sharing-rate-a", "--m SHARING_RATE_A", "--warmup-ratio", "--resume")
    )


def test_resume_with_other_settings_is_refused_naming_them(tiny, tmp_path):
    """Following "continue with: prolora train --resume ..." without the run's flags must not silently train
    a different run (e.g. 30 steps instead of 3, another schedule)."""
    out = tmp_path / "run"
    train(config(tiny, out))
    before = (out / "run_config.json").read_text()
    with pytest.raises(ValueError, match=r"max_steps 6 \(the run\) vs 9 \(now\).*learning_rate"):
        train(config(tiny, out, resume=True, max_steps=9, learning_rate=1e-3))
    assert (out / "run_config.json").read_text() == before  # nothing rewritten
