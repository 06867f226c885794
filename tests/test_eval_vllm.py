"""``prolora eval --engine vllm``: argument checks everywhere; with vLLM installed, the same predictions and
scores as the transformers engine on a tiny model with a PRoLoRA adapter (greedy GSM8K)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_eval_cli import FIXTURES, make_tiny_model

from prolora.cli import main
from prolora.eval.vllm_engine import VllmAdapters, max_lora_rank, vllm_version


def _write_lora_config(path: Path, r: int, rank_pattern: dict | None = None) -> str:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": r, "rank_pattern": rank_pattern or {}}))
    return str(path)


def test_max_lora_rank_is_the_smallest_vllm_slot_that_fits(tmp_path):
    assert max_lora_rank([]) == 1
    assert max_lora_rank([_write_lora_config(tmp_path / "a", 8)]) == 8
    assert max_lora_rank([_write_lora_config(tmp_path / "b", 4, {"x": 12})]) == 16
    with pytest.raises(ValueError, match="rank 1000"):
        max_lora_rank([_write_lora_config(tmp_path / "c", 1000)])


def test_loss_data_needs_the_transformers_engine(tmp_path, capsys):
    code = main(
        [
            "eval",
            "--engine",
            "vllm",
            "--tasks",
            "none",
            "--loss-data",
            "embedded",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 2 and "--engine transformers" in capsys.readouterr().err


def test_without_vllm_the_engine_names_the_install(tmp_path, capsys):
    if vllm_version() is not None:
        pytest.skip("vLLM is installed")
    code = main(
        [
            "eval",
            "--engine",
            "vllm",
            "--tasks",
            "gsm8k",
            "--data-dir",
            str(FIXTURES),
            "--limit",
            "1",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert code == 2 and "scripts/vllm_env.sh" in capsys.readouterr().err


class _FakeLM:
    lora_request = None


def test_adapter_switching_sets_the_lora_request():
    pytest.importorskip("vllm")
    adapters = VllmAdapters(_FakeLM(), {"a": "/x/a", "b": "/x/b"})
    adapters.set_adapter("b")
    assert (adapters.lm.lora_request.lora_name, adapters.lm.lora_request.lora_int_id) == ("b", 2)
    with adapters.disable_adapter():
        assert adapters.lm.lora_request is None
    assert adapters.lm.lora_request.lora_path == "/x/b"


@pytest.mark.slow
def test_vllm_engine_gives_the_transformers_engines_predictions(tmp_path):
    """A tiny Llama with a PRoLoRA adapter (exported on the fly): same GSM8K text and scores on both engines."""
    pytest.importorskip("vllm")
    from test_tuner import _randomise
    from transformers import LlamaForCausalLM

    from prolora import PRoLoRAConfig, get_prolora_model

    small, tokenizer = make_tiny_model()
    config = small.config
    config.hidden_size, config.intermediate_size, config.num_attention_heads = 128, 128, 2
    config.num_key_value_heads, config.head_dim = (
        1,
        64,
    )  # head_dim 64: vLLM's CPU attention has no kernel for tiny heads
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    pm = get_prolora_model(
        model,
        PRoLoRAConfig(
            r=8,
            unshared_r=1,
            sharing_rate_a=2,
            sharing_rate_b=2,
            target_modules=["q_proj", "v_proj", "down_proj"],
        ),
    )
    _randomise(pm, std=0.3)
    pm.save_pretrained(tmp_path / "adapter")
    runs = {}
    for engine in ("transformers", "vllm"):
        out = tmp_path / engine
        assert (
            main(
                [
                    "eval",
                    "--engine",
                    engine,
                    "--model",
                    str(tmp_path / "model"),
                    "--include-base",
                    "--adapter",
                    f"pro={tmp_path / 'adapter'}",
                    "--tasks",
                    "gsm8k",
                    "--data-dir",
                    str(FIXTURES),
                    "--limit",
                    "2",
                    "--max-new-tokens",
                    "8",
                    "--output-dir",
                    str(out),
                ]
            )
            == 0
        )
        results = json.loads((out / "results.json").read_text())
        runs[engine] = {r["label"]: r["scores"] for r in results["runs"]}
        for label in ("base", "pro"):
            rows = (out / "predictions" / label / "gsm8k.jsonl").read_text().splitlines()
            runs[engine][label, "text"] = [json.loads(row)["response"] for row in rows]
    assert runs["vllm"] == runs["transformers"]
    assert runs["vllm"]["base", "text"] != runs["vllm"]["pro", "text"]  # the adapter changes the output
