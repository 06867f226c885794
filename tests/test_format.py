"""The compact adapter file, PEFT round trips, dense LoRA export, and load errors."""

import json
import os
import subprocess
import sys

import peft
import pytest
import torch
from conftest import make_tiny_llama
from safetensors import safe_open
from test_tuner import LLAMA_TARGETS, _config, _randomise

import prolora
from prolora import PRoLoRAConfig, get_prolora_model
from prolora.tuner.saved import DELTA_W_KEY, delta_w_record


@pytest.fixture
def saved(tmp_path):
    pm = get_prolora_model(make_tiny_llama(), _config())
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    pm.save_pretrained(tmp_path / "adapter")
    return pm, x, pm(x).logits, tmp_path / "adapter"


def test_file_holds_only_compact_tensors_and_is_as_small_as_the_count(saved):
    pm, _, _, path = saved
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    file = path / "adapter_model.safetensors"
    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())
        metadata = f.metadata()
        assert set(metadata) == {"format", DELTA_W_KEY} and metadata["format"] == "pt"
        assert json.loads(metadata[DELTA_W_KEY]) == delta_w_record(pm.peft_config["default"])
        assert sum(f.get_tensor(k).numel() for k in keys) == trainable
    assert {k.rsplit(".", 1)[-1] for k in keys} == {"prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u"}
    assert len(keys) == 4 * 2 * len(LLAMA_TARGETS)
    header = int.from_bytes(file.read_bytes()[:8], "little")
    assert os.path.getsize(file) <= 1.01 * trainable * 4 + 8 + header
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "PROLORA" and cfg["module_shapes"]["model.layers.0.self_attn.k_proj"] == [
        16,
        48,
    ]


def test_save_load_is_bit_exact(saved):
    _, x, y, path = saved
    loaded = peft.PeftModel.from_pretrained(make_tiny_llama(), path).eval()
    assert torch.equal(loaded(x).logits, y)
    assert isinstance(loaded.peft_config["default"], PRoLoRAConfig)


def test_stock_get_peft_model_and_load_adapter(saved):
    _, x, y, path = saved
    pm = peft.get_peft_model(make_tiny_llama(), _config())
    assert type(pm.base_model).__name__ == "PRoLoRAModel"
    pm.load_adapter(path, adapter_name="trained")
    pm.set_adapter("trained")
    pm.eval()
    assert torch.equal(pm(x).logits, y)


def test_transformers_load_adapter(saved):
    _, x, y, path = saved
    model = make_tiny_llama()
    model.load_adapter(str(path))
    assert torch.equal(model(x).logits, y)


def test_export_lora_loads_in_stock_peft_without_prolora(saved, tmp_path):
    pm, x, y, path = saved
    out = prolora.export_lora(path, tmp_path / "lora")
    same = prolora.export_lora(pm, tmp_path / "lora_from_model")
    assert (out / "adapter_model.safetensors").read_bytes() == (
        same / "adapter_model.safetensors"
    ).read_bytes()
    torch.save({"x": x, "y": y}, tmp_path / "io.pt")
    script = f"""
import sys, torch
sys.modules["prolora"] = None  # prolora must not be needed
sys.path.insert(0, {os.path.dirname(__file__)!r})
from conftest import make_tiny_llama
from peft import PeftModel
model = PeftModel.from_pretrained(make_tiny_llama(), {str(out)!r}).eval()
assert type(model.peft_config["default"]).__name__ == "LoraConfig"
d = torch.load({str(tmp_path / "io.pt")!r})
got = model(d["x"]).logits
rel = ((got - d["y"]).abs().max() / d["y"].abs().max()).item()
print(rel)
assert rel <= 1e-5, rel
"""
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_export_keeps_per_module_ranks(tmp_path):
    pm = get_prolora_model(make_tiny_llama(), _config(overrides={"mlp\\..*": {"r": 4, "unshared_r": 2}}))
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    y = pm(x).logits
    out = prolora.export_lora(pm, tmp_path / "lora")
    lora = peft.PeftModel.from_pretrained(make_tiny_llama(), out).eval()
    torch.testing.assert_close(lora(x).logits, y, rtol=1e-5, atol=1e-5)


def test_loading_onto_other_shapes_names_module_and_shapes(saved):
    _, _, _, path = saved
    other = make_tiny_llama(intermediate_size=96)
    with pytest.raises(ValueError, match=r"mlp.gate_proj has weight shape \(o, h\) = \(80, 48\).*\(96, 48\)"):
        peft.PeftModel.from_pretrained(other, path)


@pytest.mark.parametrize(
    ("layers", "message"),
    [(1, "saved with modules the base model lacks"), (3, "has no weights for model.layers.2")],
)
def test_loading_onto_a_base_with_other_layers_fails(saved, layers, message):
    """Extra layers would get fresh adapters and missing ones would drop weights, silently: refused."""
    _, _, _, path = saved
    with pytest.raises(ValueError, match=message):
        peft.PeftModel.from_pretrained(make_tiny_llama(num_hidden_layers=layers), path)


def test_missing_and_corrupt_files(saved, tmp_path):
    _, _, _, path = saved
    with pytest.raises(FileNotFoundError, match="adapter_config.json not found"):
        prolora.export_lora(tmp_path / "nowhere", tmp_path / "o")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text((path / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        prolora.export_lora(broken, tmp_path / "o")
    with pytest.raises(Exception):  # noqa: B017 - stock peft raises its own error for the same file
        peft.PeftModel.from_pretrained(make_tiny_llama(), broken)


def _edited_copy(src, dst, **changes):
    """A copy of adapter ``src`` whose adapter_config.json has ``changes`` applied (weights untouched)."""
    dst.mkdir()
    (dst / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    config = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, **changes}))
    return dst


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        # down_proj (h = 80, m = 5): A_0 is (r − u, 80/5) = (7, 16)
        ({"unshared_r": 0}, r"down_proj.prolora_A0 has shape \(7, 16\), but the config .* implies \(8, 16\)"),
        ({"r": 16}, r"has shape .* but the config .* implies"),
        (
            {"sharing_rate_a": 2},
            r"down_proj.prolora_A0 has shape \(7, 16\), but the config .* implies \(7, 40\)",
        ),
        ({"module_shapes": {}}, "module_shapes is empty"),
        ({"rotation": "no"}, "rotation='no' must be true or false"),
        ({"lora_alpha": "x"}, "lora_alpha='x' must be a positive number"),
        ({"module_shapes": [1, 2]}, "module_shapes must map module names"),
    ],
)
def test_config_edited_apart_from_its_weights_is_refused(saved, tmp_path, changes, message):
    """A config that no longer describes its weights must not expand into a silently wrong ΔW."""
    _, _, _, path = saved
    edited = _edited_copy(path, tmp_path / "edited", **changes)
    with pytest.raises(ValueError, match=message):
        prolora.export_lora(edited, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_export_never_overwrites_its_source_and_asks_before_replacing(saved, tmp_path):
    _, _, _, path = saved
    before = (path / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="is the source adapter itself"):
        prolora.export_lora(path, path, overwrite=True)
    assert (path / "adapter_model.safetensors").read_bytes() == before
    out = prolora.export_lora(path, tmp_path / "lora")
    with pytest.raises(ValueError, match="already holds adapter_model.safetensors.*--overwrite"):
        prolora.export_lora(path, out)
    prolora.export_lora(path, out, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        prolora.export_lora(path, tmp_path / "file")


def test_bnb_4bit_base_forward_and_merge():
    """QLoRA base (bitsandbytes NF4, CPU): forward = dequantized W0 + ΔW; merge = requantized (W0 + ΔW)."""
    bnb = pytest.importorskip("bitsandbytes")
    from peft.utils.integrations import dequantize_bnb_weight

    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 32, bias=False)
    q = bnb.nn.Linear4bit(64, 32, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    q.weight = bnb.nn.Params4bit(dense.weight.data.clone(), requires_grad=False, quant_type="nf4")
    q = q.to("cpu")  # quantizes
    pm = get_prolora_model(
        torch.nn.Sequential(q),
        PRoLoRAConfig(r=4, unshared_r=1, sharing_rate_a=4, sharing_rate_b=4, target_modules=["0"]),
    )
    _randomise(pm, std=0.05)
    layer = pm.base_model.model[0]
    w0 = dequantize_bnb_weight(q.weight, state=q.weight.quant_state)
    x = torch.randn(3, 64)
    pm.train()
    pm(x).sum().backward()  # gradients reach the chunks through the 4-bit base
    assert layer.prolora_A0["default"].grad.abs().sum() > 0
    pm.eval()
    with torch.no_grad():
        delta = layer.get_delta_weight("default")
        torch.testing.assert_close(pm(x), x @ (w0 + delta).T, rtol=1e-2, atol=1e-2)
        # bnb repacks NF4 weights for its CPU kernel at the first eval forward; merging reads them back
        w_now = layer._base_weight()
        torch.testing.assert_close(w_now, w0, rtol=0, atol=1e-3)
        requant = bnb.nn.Params4bit((w_now + delta).clone(), requires_grad=False, quant_type="nf4").to("cpu")
        expected = dequantize_bnb_weight(requant, state=requant.quant_state)
        with pytest.warns(UserWarning, match="rounds"):
            pm.merge_adapter()
        merged = dequantize_bnb_weight(layer.base_layer.weight, state=layer.base_layer.weight.quant_state)
        torch.testing.assert_close(merged, expected)


def test_export_cli(saved, tmp_path, capsys):
    from prolora.cli import main

    _, x, y, path = saved
    assert main(["export", str(path), str(tmp_path / "cli_lora")]) == 0
    assert "wrote dense LoRA adapter" in capsys.readouterr().out
    lora = peft.PeftModel.from_pretrained(make_tiny_llama(), tmp_path / "cli_lora").eval()
    torch.testing.assert_close(lora(x).logits, y, rtol=1e-5, atol=1e-5)


def test_missing_local_model_path_is_named_before_transformers_sees_it(tmp_path):
    """A path that cannot be a hub id (absolute, ./, ~, or more than one '/') must exist; hub ids pass."""
    from prolora.base_models import resolve_model

    for name in (str(tmp_path / "nope"), "./nope", "runs/a/b"):
        with pytest.raises(FileNotFoundError, match="model directory not found"):
            resolve_model(name)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct", {})
    assert resolve_model(str(tmp_path)) == (str(tmp_path), {})
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "m.gguf"))


def test_export_accepts_a_train_run_directory(saved, tmp_path):
    """`prolora train` writes RUN/adapter/; export, like generate and eval, takes RUN itself."""
    _, _, _, path = saved
    run = tmp_path / "run"
    run.mkdir()
    path.rename(run / "adapter")
    out = prolora.export_lora(run, tmp_path / "dense")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_adapter_saved_by_v0_1_0_loads_and_gives_its_outputs():
    """A fixture saved by prolora 0.1.0 (before the package layout changed) loads and reproduces its logits."""
    from pathlib import Path

    from safetensors.torch import load_file

    fixture = Path(__file__).parent / "fixtures" / "adapter-v0.1.0"
    expected = load_file(fixture / "expected.safetensors")
    model = peft.PeftModel.from_pretrained(make_tiny_llama(), fixture).eval()
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    assert isinstance(model.peft_config["default"], PRoLoRAConfig)
    config, tensors = prolora.format.read_adapter(fixture)
    assert len(tensors) == 4 * 14
    assert (config.r, config.unshared_r, config.sharing_rate_a, config.sharing_rate_b) == (4, 1, 3, 2)


def test_written_files_are_readable_by_other_users(saved, tmp_path):
    """Atomic writes start from an owner-only temporary file; the result must get the usual 0666 & ~umask,
    or a server running as another user cannot read an exported adapter."""
    import stat

    mask = os.umask(0o022)
    try:
        out = prolora.export_lora(saved[3], tmp_path / "lora")
    finally:
        os.umask(mask)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o644


def test_reading_an_adapter_again_and_again_keeps_no_memory(saved):
    """A server loads and evicts adapters for as long as it runs: a read must keep nothing per tensor
    (safetensors 0.8's get_tensor kept about 56 bytes per tensor for the life of the process)."""
    import gc
    import tracemalloc

    from prolora.format import read_adapter

    path = saved[3]
    for _ in range(300):  # lazy imports, and the bounded caches (256 entries) filled first
        read_adapter(path)
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            read_adapter(path)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 100_000, f"200 reads kept {grown} bytes"  # get_tensor kept 660 kB here
