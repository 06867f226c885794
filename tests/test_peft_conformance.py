"""What peft's own generic tuner tests found (issue 16), as regular tests: each failed before its fix.

The full conformance run against peft 0.21.2's test suite is ``scripts/peft_conformance.py`` (not part of
the default test run); see docs/peft-conformance.md.
"""

import pytest
import torch
from conftest import make_tiny_llama

from prolora import PRoLoRAConfig, equations, get_prolora_model
from prolora.tuner import layer as layer_module
from prolora.tuner.model import prolora_modules

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _config(**kw):
    kw.setdefault("target_modules", TARGETS)
    return PRoLoRAConfig(**{"r": 8, "unshared_r": 1, "sharing_rate_a": 5, "sharing_rate_b": 3, **kw})


def _randomise(model, std=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "prolora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _clear_index_caches():
    """Start from empty index caches, so that the first index built is the one made under inference mode
    (whatever tests ran before in this process)."""
    equations._roll_index.cache_clear()
    equations.flat_gather_indices.cache_clear()
    layer_module._layout.cache_clear()


# ------------------------------------------------------------------- defect 1: inference-mode caches
def test_merge_after_inference_mode_forward():
    _clear_index_caches()
    pm = get_prolora_model(make_tiny_llama(), _config())
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    with torch.inference_mode():
        y = pm(x).logits.clone()
    # a fresh model of the same shapes reuses the cached indices
    fresh = get_prolora_model(make_tiny_llama(), _config())
    _randomise(fresh)
    fresh.eval()
    for model in (pm, fresh):
        model.merge_adapter()
        with torch.no_grad():
            torch.testing.assert_close(model(x).logits, y, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
    merged = fresh.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, y, rtol=1e-5, atol=1e-5)


def test_training_step_after_inference_mode_forward():
    _clear_index_caches()
    pm = get_prolora_model(make_tiny_llama(), _config())
    _randomise(pm)  # B = 0 at init would give A zero gradients
    x = torch.randint(0, 128, (2, 7))
    pm.eval()
    with torch.inference_mode():
        pm(x)
    pm.train()
    pm(x, labels=x).loss.backward()
    grads = [p.grad for n, p in pm.named_parameters() if "prolora_A0" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_frozen_adapter_backward_to_inputs_after_inference_mode_forward():
    """Cached expanded factors built under inference mode must be usable when autograd records later
    (frozen adapter, input that requires grad: e.g. prompt tuning or an input-gradient attribution)."""
    pm = get_prolora_model(make_tiny_llama(), _config())
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    with torch.inference_mode():
        pm(x)
    pm.requires_grad_(False)
    emb = pm.get_input_embeddings()(x).detach().requires_grad_(True)
    pm(inputs_embeds=emb).logits.sum().backward()
    # the same gradient as with the cache off
    grad = emb.grad.clone()
    emb.grad = None
    pm.base_model.set_expanded_cache(False)
    pm(inputs_embeds=emb).logits.sum().backward()
    torch.testing.assert_close(emb.grad, grad, rtol=1e-4, atol=1e-4)


def test_adapter_created_under_inference_mode_works():
    with torch.inference_mode():
        pm = get_prolora_model(make_tiny_llama(), _config())
        _randomise(pm)
        pm.eval()
        x = torch.randint(0, 128, (2, 7))
        y = pm(x).logits.clone()
        torch.testing.assert_close(pm(x).logits, y)  # served without the cache: no version counter
        pm.merge_adapter()
        torch.testing.assert_close(pm(x).logits, y, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------ defects 2 and 3: per-row adapter_names as LoRA
def _two_adapters(**kw):
    pm = get_prolora_model(make_tiny_llama(), _config(**kw), adapter_name="one")
    pm.add_adapter("two", _config(r=4, unshared_r=0, sharing_rate_a=2, sharing_rate_b=2, **kw))
    _randomise(pm, seed=3)
    with torch.no_grad():  # modules_to_save copies start equal to the base module: make them differ
        for name, p in pm.named_parameters():
            if ".modules_to_save." in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.5)
    return pm.eval()


def test_generate_mixed_adapters_with_beam_search():
    pm = _two_adapters()
    ids = torch.randint(1, 128, (3, 5))
    kw = {"max_new_tokens": 4, "num_beams": 3, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        mixed = pm.generate(input_ids=ids, adapter_names=["one", "two", "__base__"], **kw)
        pm.set_adapter("one")
        y1 = pm.generate(input_ids=ids, **kw)
        pm.set_adapter("two")
        y2 = pm.generate(input_ids=ids, **kw)
        with pm.disable_adapter():
            base = pm.generate(input_ids=ids, **kw)
    assert torch.equal(mixed[0], y1[0]) and torch.equal(mixed[1], y2[1]) and torch.equal(mixed[2], base[2])
    assert not torch.equal(y1, y2)


def test_generate_beam_search_adapter_names_must_be_a_list():
    pm = _two_adapters()
    with torch.no_grad(), pytest.raises(TypeError, match="adapter_names must be a list"):
        pm.generate(input_ids=torch.randint(1, 128, (1, 5)), adapter_names="one", max_new_tokens=2, num_beams=2,
                    pad_token_id=0)


def test_mixed_batch_routes_modules_to_save_copies():
    pm = _two_adapters(modules_to_save=["lm_head"])
    x = torch.randint(0, 128, (3, 6))
    with torch.no_grad():
        mixed = pm(x, adapter_names=["two", "one", "__base__"]).logits
        pm.set_adapter("one")
        y1 = pm(x).logits
        pm.set_adapter("two")
        y2 = pm(x).logits
        with pm.disable_adapter():
            base = pm(x).logits
        pm.set_adapter("one")
        pm.base_model.model.lm_head.modules_to_save["one"].weight.zero_()  # row 1 really reads a's copy
        zeroed = pm(x, adapter_names=["two", "one", "__base__"]).logits
    torch.testing.assert_close(mixed[0], y2[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], y1[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[2], base[2], rtol=1e-5, atol=1e-5)
    assert torch.all(zeroed[1] == 0) and torch.equal(zeroed[0], mixed[0])


# ------------------------------------------------------------ defect 4: layer selection checked as LoRA
@pytest.mark.parametrize("kw,match", [
    ({"target_modules": "all-linear", "layers_to_transform": [0]}, "layers_to_transform cannot be used"),
    ({"target_modules": ".*proj", "layers_pattern": "layers", "layers_to_transform": [0]},
     "layers_to_transform cannot be used"),
    ({"target_modules": ".*proj", "layers_pattern": "layers"}, "layers_pattern cannot be used"),
    ({"layers_pattern": "layers"}, "layers_pattern needs layers_to_transform"),
])
def test_layer_selection_rejected_like_lora(kw, match):
    from peft import LoraConfig

    with pytest.raises(ValueError, match=match):
        _config(**kw)
    with pytest.raises(ValueError):  # the same exception type as LoRA's
        LoraConfig(**{"target_modules": TARGETS, **kw})


def test_layers_to_transform_with_list_targets_adapts_only_those_layers():
    pm = get_prolora_model(make_tiny_llama(), _config(layers_to_transform=[1], layers_pattern="layers"))
    names = [name for name, _ in prolora_modules(pm)]
    assert names and all(".layers.1." in name for name in names)
