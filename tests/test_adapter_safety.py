"""Issue 11: a PRoLoRA adapter never loads as a silently different one, and never writes outside its folder.

Each test edits a freshly saved adapter the way a user or a broken tool would, and checks that loading
(or exporting) fails with an error naming the cause, and that a failed load leaves the model as it was.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
from conftest import make_tiny_llama
from safetensors import safe_open
from safetensors.torch import save_file
from test_tuner import _config, _randomise

import prolora
from prolora import get_prolora_model
from prolora.cli import main

DELTA_W_KEY = "prolora.delta_w"  # the metadata key of the ΔW record (prolora.tuner.saved)

FIXTURE_V010 = Path(__file__).parent / "fixtures" / "adapter-v0.1.0"
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def saved(tmp_path):
    pm = get_prolora_model(make_tiny_llama(), _config())
    _randomise(pm)
    pm.eval()
    pm.save_pretrained(tmp_path / "adapter")
    return pm, tmp_path / "adapter"


def _copy(src: Path, dst: Path, config_changes: dict | None = None, edit=None) -> Path:
    """A copy of adapter ``src``; ``config_changes`` applied to its config, ``edit(tensors)`` to its weights
    (the safetensors metadata is kept)."""
    shutil.copytree(src, dst)
    if config_changes:
        config = json.loads((src / "adapter_config.json").read_text())
        (dst / "adapter_config.json").write_text(json.dumps({**config, **config_changes}))
    if edit is not None:
        with safe_open(str(src / WEIGHTS), "pt") as f:
            metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        edit(tensors)
        save_file(tensors, str(dst / WEIGHTS), metadata=metadata)
    return dst


# ------------------------------------------------------------------ keys against module_shapes
def _rename_one(tensors):
    key = next(k for k in sorted(tensors) if k.endswith("q_proj.prolora_A0"))
    tensors[key.replace("q_proj", "q_projection")] = tensors.pop(key)


def _drop_module(tensors):
    for key in [k for k in tensors if ".layers.1.mlp.down_proj." in k]:
        del tensors[key]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            _rename_one,
            (
                r"missing tensors \['base_model.model.model.layers.0.self_attn.q_proj.prolora_A0'\] \(1\); "
                r"unexpected tensors \['base_model.model.model.layers.0.self_attn.q_projection.prolora_A0'\]"
            ),
        ),
        (
            _drop_module,
            (
                r"missing tensors \['base_model.model.model.layers.1.mlp.down_proj.prolora_A0', .* \(4\); "
                r"unexpected tensors none"
            ),
        ),
    ],
)
def test_keys_that_do_not_match_module_shapes_are_refused(saved, tmp_path, edit, message):
    _, path = saved
    bad = _copy(path, tmp_path / "bad", edit=edit)
    base = make_tiny_llama()
    before = {n: p.clone() for n, p in base.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        peft.PeftModel.from_pretrained(base, bad)
    _assert_untouched(base, before)
    with pytest.raises(ValueError, match=message):
        prolora.export_lora(bad, tmp_path / "out")


# ------------------------------------------------------------- ΔW fields recorded at save time
@pytest.mark.parametrize(
    "changes",
    [
        {"lora_alpha": 32},
        {"rotation": False},
        {"stride_a": 3},
        {"stride_b": 0},
        {"rotate_dim": "hidden"},
        {"overrides": {"down_proj": {"lora_alpha": 4}}},
    ],
)
def test_config_edits_that_keep_shapes_are_refused(saved, tmp_path, changes):
    _, path = saved
    edited = _copy(path, tmp_path / "edited", config_changes=changes)
    field = next(iter(changes))
    with pytest.raises(
        ValueError,
        match=rf"disagrees with what its weights were trained with.*{field}: "
        rf"adapter_config.json has",
    ):
        peft.PeftModel.from_pretrained(make_tiny_llama(), edited)
    with pytest.raises(ValueError, match=field):
        prolora.export_lora(edited, tmp_path / "out")
    pm = get_prolora_model(make_tiny_llama(), _config())
    with pytest.raises(ValueError, match=field):
        pm.load_adapter(edited, adapter_name="edited")
    assert list(pm.peft_config) == ["default"]


def test_adapter_files_without_the_record_still_load(tmp_path):
    """prolora 0.1.0 wrote only {"format": "pt"}: accepted (and then nothing can be compared)."""
    with safe_open(str(FIXTURE_V010 / WEIGHTS), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    peft.PeftModel.from_pretrained(make_tiny_llama(), FIXTURE_V010)
    # re-saved by this version, it carries the record
    model = peft.PeftModel.from_pretrained(make_tiny_llama(), FIXTURE_V010)
    model.save_pretrained(tmp_path / "resaved")
    with safe_open(str(tmp_path / "resaved" / WEIGHTS), "pt") as f:
        assert json.loads(f.metadata()[DELTA_W_KEY])["lora_alpha"] == 8


# ------------------------------------------------------------------------ non-finite tensors
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused_at_load_and_export(saved, tmp_path, value, capsys):
    _, path = saved
    key = "base_model.model.model.layers.1.mlp.up_proj.prolora_B_u"

    def poison(tensors):
        tensors[key][3, 0] = value

    bad = _copy(path, tmp_path / "bad", edit=poison)
    with pytest.raises(ValueError, match=rf"tensor {key} holds 1 NaN or infinite"):
        peft.PeftModel.from_pretrained(make_tiny_llama(), bad)
    assert main(["export", str(bad), str(tmp_path / "dense")]) == 2
    err = capsys.readouterr().err
    assert f"tensor {key} holds 1 NaN" in err and "not a valid PRoLoRA config" not in err
    assert not (tmp_path / "dense").exists()


def test_export_from_a_model_with_non_finite_tensors_is_refused(saved, tmp_path):
    pm, _ = saved
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.prolora_A0["default"][0, 0] = float("nan")
    with pytest.raises(
        ValueError, match=r"tensor base_model.model.model.layers.0.self_attn.q_proj.prolora_A0 holds"
    ):
        prolora.export_lora(pm, tmp_path / "dense")
    assert not (tmp_path / "dense").exists()


# ---------------------------------------------------------------- a failed load changes nothing
def _assert_untouched(model, before_state, before_modules=None):
    assert not any(type(m).__name__ == "PRoLoRALinear" for m in model.modules()) or before_modules is not None
    if before_modules is not None:
        assert dict(model.named_modules()) == before_modules
    state = model.state_dict()
    assert state.keys() == before_state.keys()
    assert all(torch.equal(state[k], v) for k, v in before_state.items())


def test_failed_load_adapter_leaves_the_model_exactly_as_before(tmp_path):
    # an adapter for a base whose MLP is wider: attention layers fit, the MLP does not (found part-way)
    other = get_prolora_model(make_tiny_llama(intermediate_size=96), _config())
    _randomise(other)
    other.save_pretrained(tmp_path / "wider")
    pm = get_prolora_model(make_tiny_llama(), _config())
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 5))
    with torch.no_grad():
        y = pm(x).logits
    modules, state = dict(pm.named_modules()), {k: v.clone() for k, v in pm.state_dict().items()}
    grads = {n: p.requires_grad for n, p in pm.named_parameters()}
    with pytest.raises(ValueError, match="weight shape"):
        pm.load_adapter(tmp_path / "wider", adapter_name="wider")
    assert list(pm.peft_config) == ["default"]
    assert all("wider" not in layer.prolora_spec for _, layer in prolora.tuner.prolora_modules(pm))
    _assert_untouched(pm, state, modules)
    assert {n: p.requires_grad for n, p in pm.named_parameters()} == grads
    with torch.no_grad():
        assert torch.equal(pm(x).logits, y)
        with pytest.raises(ValueError, match=r"Unknown adapter name\(s\) \['wider'\]"):
            pm(x, adapter_names=["wider", "default"])
    # the first adapter of a fresh model: the base model is left without any PRoLoRA layer
    base = make_tiny_llama()
    base_modules, base_state = (
        dict(base.named_modules()),
        {k: v.clone() for k, v in base.state_dict().items()},
    )
    with pytest.raises(ValueError, match="weight shape"):
        peft.PeftModel.from_pretrained(base, tmp_path / "wider")
    _assert_untouched(base, base_state, base_modules)


# ------------------------------------------------------------------------------ adapter names
@pytest.mark.parametrize(
    "name", ["/tmp/abs", "../up", "a/b", "..", "", ".hidden", "-x", "__base__", "x" * 65, "a\\b", "ü", "a b"]
)
def test_unsafe_adapter_names_are_refused_at_create_and_load(saved, tmp_path, name):
    _, path = saved
    with pytest.raises(ValueError, match="adapter name .* is not allowed"):
        get_prolora_model(make_tiny_llama(), _config(), adapter_name=name)
    pm = get_prolora_model(make_tiny_llama(), _config())
    with pytest.raises(ValueError, match="adapter name .* is not allowed"):
        pm.add_adapter(name, _config())
    with pytest.raises(ValueError, match="adapter name .* is not allowed"):
        pm.load_adapter(path, adapter_name=name)
    assert list(pm.peft_config) == ["default"]
    base = make_tiny_llama()
    with pytest.raises(ValueError, match="adapter name .* is not allowed"):
        peft.PeftModel.from_pretrained(base, path, adapter_name=name)
    assert not any(type(m).__name__ == "PRoLoRALinear" for m in base.modules())


def test_save_pretrained_writes_only_inside_its_folder(saved, tmp_path):
    _, path = saved
    pm = peft.PeftModel.from_pretrained(make_tiny_llama(), path, adapter_name="first")
    pm.load_adapter(path, adapter_name="second-1")
    pm.save_pretrained(tmp_path / "out")
    written = sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if p.is_file() and not p.is_relative_to(path)
    )
    assert all(w.startswith("out/") for w in written) and "out/second-1/adapter_model.safetensors" in written


# --------------------------------------------------------------------- loading without prolora
def test_saved_readme_and_cli_say_how_to_load_without_a_bare_key_error(saved, tmp_path, monkeypatch, capsys):
    _, path = saved
    readme = (path / "README.md").read_text()
    assert "## Loading this PRoLoRA adapter" in readme and "`import prolora`" in readme
    assert readme.count("## Loading this PRoLoRA adapter") == 1
    # stock peft in a process without prolora: the KeyError the README explains
    script = (
        f"import sys; sys.modules['prolora'] = None\nfrom peft import PeftConfig\n"
        f"PeftConfig.from_pretrained({str(path)!r})"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "KeyError: 'PROLORA'" in result.stderr
    # our CLI, with peft's mapping lacking PROLORA (as in such a process): a clear message, exit 2
    from peft import mapping

    monkeypatch.delitem(mapping.PEFT_TYPE_TO_CONFIG_MAPPING, prolora.PROLORA)
    monkeypatch.delitem(mapping.PEFT_TYPE_TO_TUNER_MAPPING, prolora.PROLORA)
    tiny = tmp_path / "tiny"
    make_tiny_llama().save_pretrained(tiny)
    code = main(["export", "--merged", "--model", str(tiny), str(path), str(tmp_path / "merged")])
    err = capsys.readouterr().err
    assert code == 2 and "peft does not know peft_type 'PROLORA'" in err and "import prolora" in err


# ------------------------------------------------------------------- export_merged: all or nothing
def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(
        models.WordLevel({f"t{i}": i for i in range(127)} | {"<unk>": 127}, unk_token="<unk>")
    )
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<unk>")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name or p.name.endswith(".old"))


def test_export_merged_without_a_tokenizer_writes_nothing(saved, tmp_path, capsys):
    _, path = saved
    model_dir = tmp_path / "base-without-tokenizer"
    make_tiny_llama().save_pretrained(model_dir)
    out = tmp_path / "merged"
    assert main(["export", "--merged", "--model", str(model_dir), str(path), str(out)]) == 2
    assert "prolora export: error:" in capsys.readouterr().err
    assert not out.exists() and _leftovers(tmp_path) == []
    # over an existing export: the old one stays whole
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main(["export", "--merged", "--overwrite", "--model", str(model_dir), str(path), str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["config.json"] and _leftovers(tmp_path) == []


def test_export_merged_failing_while_writing_leaves_nothing(saved, tmp_path, monkeypatch):
    _, path = saved
    model_dir = tmp_path / "base"
    make_tiny_llama().save_pretrained(model_dir)
    _tiny_tokenizer().save_pretrained(model_dir)
    from transformers import PreTrainedTokenizerFast

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        prolora.format.export_merged(path, tmp_path / "merged", model=str(model_dir))
    assert not (tmp_path / "merged").exists() and _leftovers(tmp_path) == []


# ------------------------------------------------------------------ merging a tied lm_head
def test_merging_an_adapter_on_a_tied_lm_head_equals_the_unmerged_model(tmp_path):
    from transformers import AutoModelForCausalLM

    base = make_tiny_llama(tie_word_embeddings=True)
    assert base.lm_head.weight is base.model.embed_tokens.weight
    embedding = base.model.embed_tokens.weight.detach().clone()
    pm = get_prolora_model(base, _config(target_modules=["lm_head", "q_proj"]))
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        unmerged = pm(x).logits
        pm.save_pretrained(tmp_path / "adapter")
        pm.merge_adapter()  # merge in place, then back
        torch.testing.assert_close(pm(x).logits, unmerged, rtol=1e-5, atol=1e-5)
        pm.unmerge_adapter()
        merged = pm.merge_and_unload()
        torch.testing.assert_close(merged(x).logits, unmerged, rtol=1e-5, atol=1e-5)
    assert torch.equal(merged.model.embed_tokens.weight, embedding)  # the embedding did not take ΔW
    assert merged.config.tie_word_embeddings is False
    # the saved merged model keeps both matrices and reloads to the same outputs
    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, unmerged, rtol=1e-5, atol=1e-5)
    # and through prolora export --merged from the saved adapter
    model_dir = tmp_path / "tied-base"
    make_tiny_llama(tie_word_embeddings=True).save_pretrained(model_dir)
    _tiny_tokenizer().save_pretrained(model_dir)
    out = prolora.format.export_merged(tmp_path / "adapter", tmp_path / "exported", model=str(model_dir))
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, unmerged, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ progress of long steps
def test_export_shows_progress_with_eta(saved, tmp_path, capsys):
    """`prolora export` shows a tqdm bar (count, rate, ETA) over the modules it converts or merges."""
    pm, path = saved
    modules = len(list(prolora.tuner.prolora_modules(pm.get_base_model())))
    assert main(["export", str(path), str(tmp_path / "dense")]) == 0
    err = capsys.readouterr().err
    assert "export: dense LoRA: 100%" in err and f"{modules}/{modules} [" in err and "module/s]" in err
    model_dir = tmp_path / "base"
    make_tiny_llama().save_pretrained(model_dir)
    _tiny_tokenizer().save_pretrained(model_dir)
    assert main(["export", "--merged", "--model", str(model_dir), str(path), str(tmp_path / "merged")]) == 0
    err = capsys.readouterr().err
    assert "export: loading the base model" in err and "export: writing the merged model" in err
    assert "Unloading and merging model: 100%" in err and "<00:00" in err  # elapsed<remaining: the ETA
