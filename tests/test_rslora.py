"""The rsLoRA scaling option (beyond the paper): ΔW = (lora_alpha / √r)·B·A, PEFT's ``use_rslora``."""

import json
import math
from pathlib import Path

import peft
import pytest
import torch
from conftest import make_tiny_llama
from reference import ref_delta
from test_tuner import _config, _randomise, _tensors

import prolora
from prolora import PRoLoRAConfig, get_prolora_model
from prolora.method_presets import make_adapter_config
from prolora.tuner import prolora_modules

DOWN = "base_model.model.model.layers.0.mlp.down_proj"


@pytest.mark.parametrize("use_rslora", [False, True])
def test_layer_output_matches_dense_reference_with_each_scaling(use_rslora):
    """layer(x) = x·(W + s·B·A)ᵀ with s = 16/r (paper) or 16/√r (rsLoRA), A and B from the reference."""
    model = get_prolora_model(make_tiny_llama(), _config(lora_dropout=0.0, use_rslora=use_rslora))
    _randomise(model)
    model.eval()
    layer = dict(prolora_modules(model))[DOWN].double()
    spec = layer.prolora_spec["default"]
    r = spec.r
    scale = 16 / math.sqrt(r) if use_rslora else 16 / r
    # ref_delta scales by alpha / r: alpha = r gives the bare B·A
    bare = ref_delta(*_tensors(layer), spec.h, spec.o, r, spec.m, spec.n, r)
    x = torch.randn(2, 3, layer.in_features, dtype=torch.float64)
    expected = x @ (layer.base_layer.weight + scale * bare).T
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-12)
    assert spec.scaling == pytest.approx(16 / math.sqrt(8) if use_rslora else 2.0)  # r = 8


def test_rslora_export_round_trip_is_exact_and_sets_peft_flag(tmp_path):
    pm = get_prolora_model(make_tiny_llama(), _config(use_rslora=True))
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    y = pm(x).logits
    pm.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True
    loaded = peft.PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "adapter").eval()
    assert loaded.peft_config["default"].use_rslora is True
    assert torch.equal(loaded(x).logits, y)
    out = prolora.export_lora(tmp_path / "adapter", tmp_path / "lora")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_rslora"] is True
    lora = peft.PeftModel.from_pretrained(make_tiny_llama(), out).eval()
    torch.testing.assert_close(lora(x).logits, y, rtol=1e-5, atol=1e-5)
    # the same weights read with the paper's scaling would be another model: rsLoRA really changed ΔW
    plain = get_prolora_model(make_tiny_llama(), _config(use_rslora=False))
    plain.load_state_dict(pm.state_dict())
    assert not torch.allclose(plain.eval()(x).logits, y, rtol=1e-3, atol=1e-3)


def test_rslora_at_u_equal_r_is_peft_lora_with_use_rslora():
    """PRoLoRA with u = r is LoRA: with use_rslora on both, the outputs agree (same A, B)."""
    pm = get_prolora_model(
        make_tiny_llama(),
        _config(r=4, unshared_r=4, target_modules=["q_proj"], use_rslora=True, lora_dropout=0.0),
    )
    _randomise(pm)
    lora = peft.get_peft_model(
        make_tiny_llama(), peft.LoraConfig(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, layer in prolora_modules(pm):
            target = lora.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.prolora_A_u["default"])
            target.lora_B["default"].weight.copy_(layer.prolora_B_u["default"])
    x = torch.randint(0, 128, (2, 7))
    torch.testing.assert_close(pm.eval()(x).logits, lora.eval()(x).logits, rtol=1e-5, atol=1e-5)


def test_adapter_without_the_field_loads_as_the_papers_scaling():
    fixture = Path(__file__).parent / "fixtures" / "adapter-v0.1.0"
    assert "use_rslora" not in json.loads((fixture / "adapter_config.json").read_text())
    config, _ = prolora.format.read_adapter(fixture)
    assert config.use_rslora is False


def test_flipping_use_rslora_apart_from_the_weights_is_refused(tmp_path):
    """The delta_w record in the weights file catches a config edited to another scaling."""
    pm = get_prolora_model(make_tiny_llama(), _config(use_rslora=True))
    pm.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "use_rslora": False}))
    with pytest.raises(ValueError, match="use_rslora"):
        prolora.export_lora(tmp_path / "adapter", tmp_path / "o")
    with pytest.raises(ValueError, match="use_rslora='yes' must be true or false"):
        PRoLoRAConfig(use_rslora="yes")


def test_method_presets_and_train_flag():
    assert make_adapter_config("lora", r=4, use_rslora=True).use_rslora is True
    assert make_adapter_config("prolora", use_rslora=True).use_rslora is True
    assert make_adapter_config("rolora").use_rslora is False
    with pytest.raises(ValueError, match="use_rslora is not available for 'vera'"):
        make_adapter_config("vera", use_rslora=True)
    import argparse

    from prolora.train.config import add_config_arguments, resolve_config

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert resolve_config(parser.parse_args(["--use-rslora"])).use_rslora is True
    assert resolve_config(parser.parse_args([])).use_rslora is False
