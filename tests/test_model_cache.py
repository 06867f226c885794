"""The de-quantized copy of a GGUF base model, cached once per file checksum (prolora.base_models).

The de-quantization itself (transformers) is replaced by saving a tiny random Llama, so the cache logic is
tested without the real 135M model; ``PROLORA_CACHE`` points at a temporary folder (conftest does the same
for the whole suite).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_llama

from prolora import base_models
from prolora.base_models import cache_dir, dense_gguf_dir, load_model


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """``(gguf path, builds)``: a GGUF stand-in whose "de-quantization" saves a tiny Llama (seeded by the
    file's first byte) and is recorded in ``builds``."""
    monkeypatch.setenv("PROLORA_CACHE", str(tmp_path / "cache"))
    builds = []

    def dequantize(directory, gguf_file, out):
        builds.append(out)
        seed = Path(directory, gguf_file).read_bytes()[0]
        make_tiny_llama(seed=seed).save_pretrained(out)

    monkeypatch.setattr(base_models, "_dequantize_gguf", dequantize)
    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"\x01first")
    return gguf, builds


def test_built_once_then_loaded_from_the_cache(fake_gguf):
    gguf, builds = fake_gguf
    first = load_model(str(gguf))
    second = load_model(str(gguf))
    assert len(builds) == 1
    assert first.name_or_path == second.name_or_path == str(gguf.parent)  # what adapters record
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    reference = make_tiny_llama(seed=1).state_dict()
    torch.testing.assert_close(
        first.state_dict()["model.embed_tokens.weight"],
        reference["model.embed_tokens.weight"],
        rtol=0,
        atol=0,
    )
    (copy,) = [p for p in (cache_dir() / "gguf").iterdir() if p.name.startswith("tiny-")]
    source = json.loads((copy / "source.json").read_text())
    assert source["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert copy.name.startswith(f"tiny-{source['sha256'][:16]}")
    assert (copy / "model.safetensors").is_file() and not list(copy.glob("*.bin"))


def test_changed_file_gets_a_new_copy(fake_gguf):
    gguf, builds = fake_gguf
    dense_gguf_dir(str(gguf.parent), gguf.name)
    stat = gguf.stat()
    gguf.write_bytes(b"\x02other")  # same size, new content
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = dense_gguf_dir(str(gguf.parent), gguf.name)
    assert len(builds) == 2
    assert (
        json.loads(Path(second, "source.json").read_text())["sha256"]
        == hashlib.sha256(b"\x02other").hexdigest()
    )
    assert len([p for p in (cache_dir() / "gguf").iterdir() if p.name.startswith("tiny-")]) == 2


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(fake_gguf, monkeypatch):
    gguf, builds = fake_gguf
    build = base_models._dequantize_gguf

    def fail(directory, gguf_file, out):
        make_tiny_llama().save_pretrained(out)  # half done
        raise KeyboardInterrupt

    monkeypatch.setattr(base_models, "_dequantize_gguf", fail)
    with pytest.raises(KeyboardInterrupt):
        dense_gguf_dir(str(gguf.parent), gguf.name)
    assert [p.name for p in (cache_dir() / "gguf").iterdir()] == ["checksums"]
    monkeypatch.setattr(base_models, "_dequantize_gguf", build)
    assert os.path.isfile(os.path.join(dense_gguf_dir(str(gguf.parent), gguf.name), "source.json"))
    assert len(builds) == 1


def test_unwritable_cache_falls_back_to_the_gguf_file(fake_gguf, monkeypatch, tmp_path, capsys):
    gguf, builds = fake_gguf
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("PROLORA_CACHE", str(blocker))
    assert dense_gguf_dir(str(gguf.parent), gguf.name) is None and not builds
    assert "PROLORA_CACHE" in capsys.readouterr().err


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PROLORA_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "prolora"
    monkeypatch.setenv("PROLORA_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
