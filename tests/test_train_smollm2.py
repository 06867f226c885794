"""Smoke test on the real embedded model: train two steps, save, reload the adapter, generate."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from prolora.inference.generation import load_generator
from prolora.train import TrainConfig, train


@pytest.mark.slow
def test_embedded_default_trains_saves_reloads_and_generates(tmp_path):
    out = tmp_path / "run"
    summary = train(
        TrainConfig(
            output_dir=str(out),
            max_steps=2,
            batch_size=2,
            micro_batch_size=2,
            max_length=128,
            heldout_size=4,
            save_steps=2,
        )
    )
    assert summary["method"] == "prolora" and summary["steps"] == 2 and summary["quantization"] == "none"
    assert summary["adapter_file_bytes"] < summary["lora_same_rank_bytes"]
    assert summary["heldout_loss_base"] > 0 and summary["heldout_loss_adapter"] > 0

    generator = load_generator(None, [str(out)], None)
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    loaded = {k: v for k, v in generator.model.state_dict().items() if "prolora" in k}
    assert len(loaded) == len(saved)
    name = next(iter(saved))  # saved keys omit the adapter name, loaded ones carry it
    match = [v for k, v in loaded.items() if k.replace(f".{generator.active}", "") == name]
    assert match and torch.equal(match[0], saved[name])
    reply = generator.reply(
        [{"role": "user", "content": "Is water wet? Answer yes or no."}], max_new_tokens=8
    )
    assert reply.text and 0 < reply.new_tokens <= 8
