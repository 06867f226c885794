"""Baselines of the paper (Section 4.1, Table 2): Tied-LoRA (our PEFT tuner) and VeRA (PEFT's), on tiny Llamas."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import make_tiny_llama
from peft import PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from prolora.baselines import (
    apply_tied_lora,
    load_tied_lora,
    make_vera_config,
    tied_lora_param_count,
    vera_param_counts,
)

R = 4
QKV = ("q_proj", "k_proj", "v_proj")
SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MHA = {"num_key_value_heads": 6}  # k/v project to the hidden size, as in LLaMA2-7B
IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))


def _randomize(model, seed: int = 1) -> None:
    """Give every trainable tensor random values (at init B = 0 and u = v = 1 would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def _tied(overrides=None, r: int = R, **kwargs):
    model = apply_tied_lora(make_tiny_llama(**(overrides or {})), r=r, lora_dropout=0.0, **kwargs)
    _randomize(model)
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _attention_layers(model):
    return [layer.self_attn for layer in model.base_model.model.model.layers]


# ------------------------------------------------------------------------------------------------ Tied-LoRA
@pytest.mark.parametrize("overrides", [{}, MHA], ids=["gqa", "mha"])
def test_tied_lora_equals_dense_reference(overrides):
    """Logits equal a copy of the base model whose W_p gets (α/r)·diag(v_{l,p})·B_p·diag(u_l)·A added."""
    model = _tied(overrides)
    reference = make_tiny_llama(**overrides)
    shared = model.base_model
    a, b, u = (shared.tied_A["default"], shared.tied_B["default"], shared.tied_u["default"])
    offset = 0
    outputs = {p: getattr(reference.model.layers[0].self_attn, p).out_features for p in QKV}
    with torch.no_grad():
        for p in QKV:  # B stacks B_q, B_k, B_v in this order
            b_p = b[offset : offset + outputs[p]]
            offset += outputs[p]
            for layer, (adapted, ref) in enumerate(
                zip(_attention_layers(model), reference.model.layers, strict=True)
            ):
                v = getattr(adapted, p).tied_lora_v["default"]
                delta = (16 / R) * torch.diag(v) @ b_p @ torch.diag(u[layer]) @ a
                getattr(ref.self_attn, p).weight += delta
    assert offset == b.shape[0]
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, MHA], ids=["gqa", "mha"])
def test_tied_lora_trainable_tensors_shared_once_and_counted(overrides):
    model = _tied(overrides)
    cfg = model.base_model.model.config
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    d_kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
    trainable = {n.split(".")[-2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"tied_A", "tied_B", "tied_u", "tied_lora_v"}
    # one nn.Parameter per shared tensor, referenced by every adapted layer
    for name in ("tied_A", "tied_B", "tied_u"):
        canonical = getattr(model.base_model, name)["default"]
        for attn in _attention_layers(model):
            for p in QKV:
                tensor = getattr(getattr(attn, p), name)["default"]
                assert tensor is canonical and tensor.data_ptr() == canonical.data_ptr()
    count = model.get_nb_trainable_parameters()[0]
    assert count == R * (d + d + 2 * d_kv) + layers * (R + d + 2 * d_kv)  # generalised: r·(h+Σo) + L·(r+Σo)
    assert count == tied_lora_param_count(d, [d, d_kv, d_kv], layers, R)
    if d_kv == d:
        assert count == 4 * d * R + layers * (R + 3 * d)  # the paper's formula (no GQA)
    grads_on = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("tied_" in n for n in grads_on)


def test_tied_lora_bf16_base_keeps_one_fp32_copy():
    """PEFT upcasts adapters of a bf16 base to fp32 by reassigning dict entries: the sharing must survive."""
    model = apply_tied_lora(make_tiny_llama().to(torch.bfloat16), r=R)
    a = model.base_model.tied_A["default"]
    assert a.dtype == torch.float32
    assert all(attn.v_proj.tied_A["default"] is a for attn in _attention_layers(model))


def test_tied_lora_gradients_reach_every_tensor():
    model = _tied().train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_tied_lora_save_load_one_copy(tmp_path):
    model = _tied()
    expected = _logits(model)
    state = get_peft_model_state_dict(model)
    storages = [t.untyped_storage().data_ptr() for t in state.values()]
    assert len(storages) == len(set(storages))  # no aliasing: safetensors' shared-memory check cannot trip
    save_file(state, str(tmp_path / "direct.safetensors"), metadata={"format": "pt"})
    model.save_pretrained(tmp_path / "adapter")
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"format": "pt"}
        assert sum(f.get_tensor(k).numel() for k in keys) == model.get_nb_trainable_parameters()[0]
    assert {k for k in keys if "layers" not in k} == {
        "base_model.tied_A",
        "base_model.tied_B",
        "base_model.tied_u",
    }
    assert len(keys) == 3 + 3 * 2  # shared A, B, u once; v per projection per layer
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["method"] == "tied-lora" and config["peft_type"] == "TIED_LORA"
    loaded = load_tied_lora(make_tiny_llama(), str(tmp_path / "adapter"))
    assert torch.equal(_logits(loaded), expected)
    assert loaded.get_nb_trainable_parameters()[0] == 0  # inference mode freezes the shared tensors too
    trainable = load_tied_lora(make_tiny_llama(), str(tmp_path / "adapter"), is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0]
    with pytest.raises(ValueError, match="layout"):
        PeftModel.from_pretrained(make_tiny_llama(num_hidden_layers=3), str(tmp_path / "adapter"))


def test_tied_lora_two_adapters_side_by_side(tmp_path):
    """Each adapter has its own shared A, B, u; switching and deleting adapters keeps the others intact."""
    expected = []
    for seed in (1, 2):
        model = apply_tied_lora(make_tiny_llama(), r=R, lora_dropout=0.0)
        _randomize(model, seed)
        expected.append(_logits(model.eval()))
        model.save_pretrained(tmp_path / str(seed))
    both = load_tied_lora(make_tiny_llama(), str(tmp_path / "1"), adapter_name="first")
    both.load_adapter(str(tmp_path / "2"), adapter_name="second")
    assert set(both.base_model.tied_A) == {"first", "second"}
    both.set_adapter("first")
    assert torch.equal(_logits(both), expected[0])
    both.set_adapter("second")
    assert torch.equal(_logits(both), expected[1])
    both.delete_adapter("first")
    assert set(both.base_model.tied_A) == {"second"} and torch.equal(_logits(both), expected[1])


def test_tied_lora_merge_and_unmerge():
    model = _tied()
    expected = _logits(model)
    with model.disable_adapter():
        base = _logits(model)
    model.merge_adapter()
    torch.testing.assert_close(_logits(model), expected, rtol=1e-4, atol=1e-4)
    model.unmerge_adapter()
    torch.testing.assert_close(_logits(model), expected, rtol=1e-5, atol=1e-5)
    merged = model.merge_and_unload()
    assert not any("tied" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged), expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(base, expected)


def test_tied_lora_gpt2_fused_qkv_is_the_papers_form():
    """GPT-2's fused ``c_attn`` (Conv1D, h → 3d) is Tied-LoRA's own setting: B is 3d × r, one v of 3d per layer."""
    from conftest import make_tiny_gpt2

    model = apply_tied_lora(make_tiny_gpt2(), r=R, lora_dropout=0.0, target_modules=["c_attn"])
    _randomize(model)
    d, layers = 48, 2
    assert model.get_nb_trainable_parameters()[0] == 4 * d * R + layers * (R + 3 * d)
    expected = _logits(model.eval())
    torch.testing.assert_close(_logits(model.merge_and_unload()), expected, rtol=1e-5, atol=1e-5)


def test_tied_lora_rejects_untieable_targets():
    with pytest.raises(ValueError, match="one input size"):
        apply_tied_lora(make_tiny_llama(), r=R, target_modules="all-linear")


def _trainer(model, out_dir, max_steps: int):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    gen = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": ids, "attention_mask": [1] * 8, "labels": ids}
        for ids in torch.randint(0, 128, (8, 8), generator=gen).tolist()
    ]
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=max_steps,
        save_steps=1,
        save_strategy="steps",
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    return Trainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=default_data_collator
    )


def test_tied_lora_hf_trainer_checkpoints_and_resume(tmp_path):
    """2 Trainer steps with a checkpoint per step; a checkpoint reloads exactly; resuming from step 1 works."""
    model = apply_tied_lora(make_tiny_llama(), r=R, lora_dropout=0.0)
    before = model.base_model.tied_B["default"].detach().clone()
    _trainer(model, tmp_path / "run", 2).train()
    after = model.base_model.tied_B["default"]
    assert not torch.equal(before, after)
    assert all(attn.q_proj.tied_B["default"] is after for attn in _attention_layers(model))
    for step in (1, 2):
        files = set(os.listdir(tmp_path / "run" / f"checkpoint-{step}"))
        assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files
    loaded = load_tied_lora(make_tiny_llama(), str(tmp_path / "run" / "checkpoint-2"))
    assert torch.equal(_logits(loaded), _logits(model.eval()))

    base = make_tiny_llama()
    torch.manual_seed(5)  # another adapter init, which loading checkpoint-1 must overwrite
    resumed = apply_tied_lora(base, r=R, lora_dropout=0.0)
    _trainer(resumed, tmp_path / "run", 2).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1")
    )
    for name in ("tied_A", "tied_B", "tied_u"):
        torch.testing.assert_close(
            getattr(resumed.base_model, name)["default"],
            getattr(model.base_model, name)["default"],
            rtol=1e-5,
            atol=1e-6,
        )


# ------------------------------------------------------------------------------------------------------ VeRA
def _vera():
    return get_peft_model(make_tiny_llama(), make_vera_config(r=8, vera_dropout=0.0))


def _shapes(model):
    return [
        (n, m.in_features, m.out_features) for n, m in model.named_modules() if n.rpartition(".")[2] in SEVEN
    ]


def test_vera_all_seven_projections_train_lambdas_only():
    model = _vera()
    adapted = [
        n for n, m in model.named_modules() if type(m).__name__ == "Linear" and hasattr(m, "vera_lambda_b")
    ]
    assert len(adapted) == 7 * 2  # seven projections of four different shapes, two layers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".vera_lambda_b." in n or ".vera_lambda_d." in n for n in trainable)
    counts = vera_param_counts(_shapes(make_tiny_llama()), r=8)
    assert (
        model.get_nb_trainable_parameters()[0] == counts.trainable == sum(8 + o for _, _, o in _shapes(model))
    )
    with torch.no_grad():  # λ_b = 0 at init would give λ_d a zero gradient
        for n, p in model.named_parameters():
            if ".vera_lambda_b." in n:
                p.normal_()
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    assert all(not b.requires_grad for n, b in model.named_buffers() if "vera_A" in n or "vera_B" in n)


def test_vera_save_load_exact(tmp_path):
    model = _vera()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    model.eval()
    expected = _logits(model)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert {"base_model.vera_A", "base_model.vera_B"} <= set(f.keys())  # save_projection=True
    loaded = PeftModel.from_pretrained(make_tiny_llama(), str(tmp_path))
    assert torch.equal(_logits(loaded), expected)


def test_paper_parameter_counts():
    """LLaMA2-7B (h = 4096, MLP 11008, 32 layers): Table 2's 1.42M (VeRA r=256), 4.60M / 4.99M (Tied LoRA)."""
    shapes = {
        "q_proj": (4096, 4096),
        "k_proj": (4096, 4096),
        "v_proj": (4096, 4096),
        "o_proj": (4096, 4096),
        "gate_proj": (4096, 11008),
        "up_proj": (4096, 11008),
        "down_proj": (11008, 4096),
    }
    modules = [(f"layers.{i}.{n}", h, o) for i in range(32) for n, (h, o) in shapes.items()]
    counts = vera_param_counts(modules, r=256)
    assert counts.trainable == 1_417_216
    assert (counts.frozen_peft, counts.frozen_per_type, counts.frozen_per_shape) == (
        5_636_096,
        19_988_480,
        9_830_400,
    )
    assert tied_lora_param_count(4096, [4096] * 3, 32, 256) == 4_595_712
    assert tied_lora_param_count(4096, [4096] * 3, 32, 280) == 4_989_696


def test_vera_config_paper_settings():
    config = make_vera_config()
    assert (config.r, config.vera_dropout, config.d_initial, config.save_projection) == (256, 0.1, 0.1, True)
    assert set(config.target_modules) == set(SEVEN)
