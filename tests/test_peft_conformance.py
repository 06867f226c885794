"""What peft's own generic tuner tests found (issue 16), as regular tests: each failed before its fix.

The full conformance run against peft 0.21.2's test suite is ``scripts/peft_conformance.py`` (not part of
the default test run); see docs/peft-conformance.md.
"""

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from test_tuner import _randomise

from prolora import PRoLoRAConfig, equations, get_prolora_model
from prolora.tuner import layout as layout_module
from prolora.tuner.model import prolora_modules

TARGETS = ["q_proj", "v_proj", "down_proj"]


def _config(**kw):
    kw.setdefault("target_modules", TARGETS)
    return PRoLoRAConfig(**{"r": 8, "unshared_r": 1, "sharing_rate_a": 5, "sharing_rate_b": 3, **kw})


def _clear_index_caches():
    """Start from empty index caches, so that the first index built is the one made under inference mode
    (whatever tests ran before in this process)."""
    equations._roll_index.cache_clear()
    equations.flat_gather_indices.cache_clear()
    layout_module.gather_index.cache_clear()


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
        pm.generate(
            input_ids=torch.randint(1, 128, (1, 5)),
            adapter_names="one",
            max_new_tokens=2,
            num_beams=2,
            pad_token_id=0,
        )


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
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"target_modules": "all-linear", "layers_to_transform": [0]}, "layers_to_transform cannot be used"),
        (
            {"target_modules": ".*proj", "layers_pattern": "layers", "layers_to_transform": [0]},
            "layers_to_transform cannot be used",
        ),
        ({"target_modules": ".*proj", "layers_pattern": "layers"}, "layers_pattern cannot be used"),
        ({"layers_pattern": "layers"}, "layers_pattern needs layers_to_transform"),
    ],
)
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


# ------------------------------------------------------------------- gaps: peft's convert_to_lora
@pytest.mark.parametrize(
    "make,cfg",
    [
        (make_tiny_llama, {}),
        (make_tiny_llama, {"unshared_r": 0, "share": "rank", "sharing_rate_a": 3, "sharing_rate_b": 3}),
        (make_tiny_llama, {"unshared_r": 8}),
        (make_tiny_gpt2, {"target_modules": ["c_attn", "c_fc"], "sharing_rate_a": 4, "sharing_rate_b": 4}),
    ],
)
def test_peft_convert_to_lora_is_exact(make, cfg, tmp_path):
    from peft import PeftModel, convert_to_lora, get_peft_model, save_as_lora, set_peft_model_state_dict

    pm = get_prolora_model(make(), _config(**cfg))
    _randomise(pm)
    pm.eval()
    assert pm.supports_lora_conversion()
    x = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        y = pm(x).logits
        deltas = {name: layer.get_delta_weight("default") for name, layer in prolora_modules(pm)}
    lora_config, state_dict = convert_to_lora(pm, rank=8)
    save_as_lora(tmp_path, pm, rank=8)
    lora = get_peft_model(make(), lora_config).eval()
    assert not set_peft_model_state_dict(lora, state_dict).unexpected_keys
    loaded = PeftModel.from_pretrained(make(), tmp_path).eval()
    with torch.no_grad():
        for model in (lora, loaded):
            torch.testing.assert_close(model(x).logits, y, rtol=1e-4, atol=1e-4)
        lora_layers = dict(lora.named_modules())
        for name, delta in deltas.items():  # ΔW itself: exact up to float rounding (rank r SVD of rank-r ΔW)
            torch.testing.assert_close(
                lora_layers[name].get_delta_weight("default"), delta, rtol=1e-4, atol=1e-5
            )


# ----------------------------------------------- gaps: zero-element tensors (u = 0, u = r) are not parameters
@pytest.mark.parametrize("u,empty", [(0, ("prolora_A_u", "prolora_B_u")), (8, ("prolora_A0", "prolora_B0"))])
def test_zero_element_tensors_are_not_parameters_but_keep_their_file_keys(u, empty, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    from prolora.format.compact import check_tensors, expand_adapter, read_adapter

    pm = get_prolora_model(make_tiny_llama(), _config(unshared_r=u))
    assert all(p.numel() > 0 for _, p in pm.named_parameters())
    assert not any(name in n for n, _ in pm.named_parameters() for name in empty)
    for name, p in pm.named_parameters():  # what peft's own checks do to every adapter parameter
        if "prolora_" in name:
            p.data[0] = 0.5
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        y = pm(x).logits
    pm.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    modules = pm.peft_config["default"].module_shapes
    names = ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")
    # the file format does not depend on u: four tensors per module, the empty ones as zero-size tensors
    assert set(saved) == {f"base_model.model.{m}.{n}" for m in modules for n in names}
    for key, tensor in saved.items():
        assert (tensor.numel() == 0) == key.endswith(empty)
    config, tensors = read_adapter(tmp_path)
    check_tensors(config, tensors)
    expanded = expand_adapter(config, tensors)
    for name, layer in prolora_modules(pm):  # the file expands to the model's ΔW
        a, b, scaling = expanded[name.removeprefix("base_model.model.")]
        torch.testing.assert_close((b @ a) * scaling, layer.get_delta_weight("default").detach())
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path).eval()
    assert not any(name in n for n, _ in loaded.named_parameters() for name in empty)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, y, rtol=1e-6, atol=1e-6)
    # training: the compact tensors that exist get gradients; nothing else is trainable
    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path, is_trainable=True)
    loaded(x, labels=x).loss.backward()
    trainable = [(n, p) for n, p in loaded.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trainable)


def test_zero_element_tensors_follow_dtype_and_inference_mode():
    pm = get_prolora_model(make_tiny_llama(), _config(unshared_r=0))
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    with torch.inference_mode():
        pm(x)
    pm.train()
    pm(x, labels=x).loss.backward()  # the empty tensors made under inference mode can be saved for backward
    pm = pm.to(torch.bfloat16).eval()
    layer = next(layer for _, layer in prolora_modules(pm))
    assert all(t.dtype == torch.bfloat16 for t in layer._compact("default"))
    with torch.no_grad():
        assert pm(x).logits.dtype == torch.bfloat16


# ---------------------------------------------------------------- gaps: exception types as peft expects
@pytest.mark.parametrize("kw", [{"bias": "all"}, {"bias": "lora_only"}, {"target_parameters": ["w"]}])
def test_unsupported_lora_options_raise_type_error_and_value_error(kw):
    from prolora.tuner.config import UnsupportedOptionError

    for expected in (TypeError, ValueError, UnsupportedOptionError):  # peft's callers / prolora's CLI
        with pytest.raises(expected, match="not supported by PRoLoRA"):
            _config(**kw)


def test_init_weights_false_starts_with_nonzero_delta():
    pm = get_prolora_model(make_tiny_llama(), _config(init_weights=False))
    assert all(layer.get_delta_weight("default").abs().sum() > 0 for _, layer in prolora_modules(pm))
    pm = get_prolora_model(make_tiny_llama(), _config())
    assert all(layer.get_delta_weight("default").abs().sum() == 0 for _, layer in prolora_modules(pm))
    with pytest.raises(ValueError, match="init_weights"):
        _config(init_weights="no")


def test_safe_merge_of_broken_adapter_raises_peft_message_and_leaves_weight():
    pm = get_prolora_model(
        make_tiny_llama(),
        _config(target_modules=["q_proj"], layers_to_transform=[0], layers_pattern="layers"),
    )
    _randomise(pm)
    layer = next(layer for _, layer in prolora_modules(pm))
    before = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.prolora_B0["default"][0, 0] = float("nan")
    with pytest.raises(
        ValueError, match="NaNs detected in the merged weights. The adapter default seems to be broken"
    ):
        pm.merge_and_unload(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before) and not layer.merged


# ----------------------------------------------------------------- gaps: add_weighted_adapter (cat, svd)
def _deltas(pm, adapter):
    with torch.no_grad():
        return {name: layer.get_delta_weight(adapter) for name, layer in prolora_modules(pm)}


@pytest.mark.parametrize("combination_type", ["cat", "svd"])
def test_add_weighted_adapter_sums_delta_weights(combination_type, tmp_path):
    pm = get_prolora_model(make_tiny_llama(), _config(), adapter_name="one")
    pm.add_adapter(
        "two",
        _config(
            r=4,
            unshared_r=0,
            sharing_rate_a=2,
            sharing_rate_b=2,
            lora_alpha=8,
            overrides={"v_proj": {"r": 6}},
        ),
    )
    _randomise(pm, seed=5)
    d1, d2 = _deltas(pm, "one"), _deltas(pm, "two")
    # svd at the full rank of the sum (r_one + r_two) is exact too
    kw = {"svd_rank": 14} if combination_type == "svd" else {}
    pm.add_weighted_adapter(["one", "two"], [0.7, -1.5], "mix", combination_type=combination_type, **kw)
    mixed = _deltas(pm, "mix")
    for name in d1:
        torch.testing.assert_close(mixed[name], 0.7 * d1[name] - 1.5 * d2[name], rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for n, p in pm.named_parameters() if ".mix" in n)
    pm.eval()
    pm.set_adapter("mix")
    x = torch.randint(0, 128, (2, 5))
    with torch.no_grad():
        y = pm(x).logits
    pm.save_pretrained(tmp_path, selected_adapters=["mix"])  # a regular PRoLoRA adapter (u = r)
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "mix").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, y, rtol=1e-5, atol=1e-5)
        pm.merge_adapter()
        torch.testing.assert_close(pm(x).logits, y, rtol=1e-4, atol=1e-4)


def test_add_weighted_adapter_svd_truncates_and_rejects_lora_only_types():
    pm = get_prolora_model(make_tiny_llama(), _config(), adapter_name="one")
    _randomise(pm, seed=5)
    pm.add_weighted_adapter(["one"], [2.0], "twice")  # default svd, rank 8 = r: exact
    d1, d2 = _deltas(pm, "one"), _deltas(pm, "twice")
    for name in d1:
        torch.testing.assert_close(d2[name], 2 * d1[name], rtol=1e-4, atol=1e-5)
    pm.add_weighted_adapter(["one"], [1.0], "low", svd_rank=2)
    for delta in _deltas(pm, "low").values():
        assert torch.linalg.matrix_rank(delta).item() <= 2
    for bad, match in [
        ({"combination_type": "ties"}, "convert the adapters to LoRA first"),
        ({"adapter_name": "one"}, "already exists"),
        ({"adapters": ["nope"]}, "not loaded"),
        ({"weights": [1.0, 2.0]}, "one weight each"),
    ]:
        kw = {"adapters": ["one"], "weights": [1.0], "adapter_name": "new", **bad}
        with pytest.raises(ValueError, match=match):
            pm.add_weighted_adapter(**kw)
    assert "new" not in pm.peft_config


def test_adapter_with_zero_size_tensors_saved_before_loads_and_resaves_identically(tmp_path):
    from pathlib import Path

    from peft import PeftModel
    from safetensors.torch import load_file

    fixture = Path(__file__).parent / "fixtures" / "adapter-v0.1.0-zero-size"
    expected = load_file(fixture / "expected.safetensors")
    model = PeftModel.from_pretrained(make_tiny_llama(), fixture).eval()
    assert all(p.numel() > 0 for _, p in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            model(expected["input_ids"]).logits, expected["logits"], rtol=1e-6, atol=1e-6
        )
    model.save_pretrained(tmp_path)
    before, after = (
        load_file(fixture / "adapter_model.safetensors"),
        load_file(tmp_path / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys() and any(t.numel() == 0 for t in before.values())
    for key, tensor in before.items():
        assert (
            after[key].shape == tensor.shape
            and after[key].dtype == tensor.dtype
            and torch.equal(after[key], tensor)
        )
