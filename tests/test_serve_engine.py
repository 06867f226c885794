"""The serving engine without HTTP: continuous batching, capacity (LRU, pins), shutdown, and `prolora serve`
under SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import torch
from serve_utils import free_port, hf_greedy, save_lora, save_model, save_prolora
from test_eval_cli import make_tiny_model

from prolora.inference.adapter_bank import AdapterBank
from prolora.inference.engine import Engine, SamplingParams, ShuttingDown, kv_bytes_per_token
from prolora.inference.registry import AdapterBusy, AdapterRegistry, UnknownAdapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    folder = root / "adapters"
    for i, name in enumerate(("d1", "d2", "d3")):
        save_prolora(folder / name, seed=10 + i)
    save_lora(folder / "dl", seed=20)
    return folder


def _engine(adapters_dir=None, max_resident=None, max_num_seqs=32, **kwargs):
    model, tokenizer = make_tiny_model()
    registry = AdapterRegistry(AdapterBank(model), adapters_dir, max_resident)
    return Engine(model, tokenizer, registry, max_num_seqs, **kwargs).start()


def test_requests_joining_a_running_batch_get_their_own_greedy_answer(adapters):
    engine = _engine(adapters)
    jobs = [
        (name, prompt, n)
        for name, prompt, n in (
            ("d1", "Hello", 30),
            ("d2", "A much longer prompt, padded", 12),
            (None, "x", 20),
            ("dl", "Mid", 25),
            ("d1", "Other", 8),
            ("d3", "Late joiner with a long prompt", 15),
        )
    ]
    results = {}

    def go(i, job):
        time.sleep(0.004 * i)  # arrive while earlier requests are decoding
        name, prompt, n = job
        results[job] = engine.generate(
            engine.tokenizer.encode(prompt), name, SamplingParams(max_tokens=n, temperature=0)
        )

    threads = [threading.Thread(target=go, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.shutdown()
    assert engine.counters["decode_steps"] < sum(n for *_, n in jobs) - len(
        jobs
    )  # rows were batched together
    for (name, prompt, n), completion in results.items():
        expected = hf_greedy(adapters / name if name else None, engine.tokenizer.encode(prompt), n)[0]
        assert completion.token_ids == expected[: len(completion.token_ids)]
        assert len(completion.token_ids) == n or completion.token_ids[-1] == 256


def test_lru_capacity_never_evicts_an_adapter_in_use(adapters):
    engine = _engine(adapters, max_resident=2)
    registry = engine.registry
    assert registry.names() == ["d1", "d2", "d3", "dl"]
    registry.acquire("d1")
    registry.acquire("d2")
    with pytest.raises(AdapterBusy, match="max-resident"):
        registry.acquire("d3")
    registry.release("d1")
    registry.acquire("d3")  # evicts d1, the idle one
    assert registry.resident() == ["d2", "d3"] and set(engine.bank.adapters) == {"d2", "d3"}
    with pytest.raises(AdapterBusy):
        registry.unload("d2")
    registry.release("d2")
    registry.release("d3")
    for name in ("d1", "dl", "d2", "d1"):  # each request loads on demand and evicts the least recently used
        assert engine.generate([1, 2, 3], name, SamplingParams(max_tokens=2, temperature=0)).finish_reason
    assert len(registry.resident()) == 2 and registry.evictions >= 4
    assert engine.bank.resident_bytes == sum(a.nbytes for a in engine.bank.adapters.values())
    with pytest.raises(UnknownAdapter):
        engine.generate([1], "nope")
    engine.shutdown()


def test_shutdown_finishes_or_fails_in_flight_requests(adapters):
    engine = _engine(adapters)
    done = engine.submit([1, 2, 3], "d1", SamplingParams(max_tokens=5, temperature=0), lambda e: None)
    events = []
    long = engine.submit([1, 2, 3], "d2", SamplingParams(max_tokens=5000, temperature=0), events.append)
    deadline = time.monotonic() + 120
    while not long.output_ids:
        assert long.finish_reason is None and time.monotonic() < deadline, long.finish_reason
        time.sleep(0.01)
    engine.shutdown(timeout=0.2)
    assert done.finish_reason == "length"
    assert long.finish_reason == "abort" and "shutting down" in events[-1].error
    assert engine.registry.entries["d2"].pins == 0
    with pytest.raises(ShuttingDown):
        engine.submit([1], None, SamplingParams(), lambda e: None)


def test_sampling_fields_are_checked():
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": ("",)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad).check()


def test_cli_serves_and_exits_cleanly_on_sigterm(tmp_path, adapters):
    model = save_model(tmp_path / "model")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prolora.cli",
            "serve",
            "--model",
            str(model),
            "--adapter",
            f"a={adapters / 'd1'}",
            "--port",
            str(port),
            "--served-model-name",
            "base",
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        stream = client.completions.create(model="a", prompt="Hi", max_tokens=60, temperature=0, stream=True)
        first = next(iter(stream))
        proc.send_signal(signal.SIGTERM)  # the running request finishes, then the server exits
        rest = list(stream)
        assert first.choices[0].text is not None and rest[-1].choices[0].finish_reason == "length"
        # uvicorn re-raises the signal after its graceful shutdown (the engine drained first: lifespan)
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        output = proc.stdout.read().decode()
        assert "torch threads: 1 (--threads)" in output and "Application shutdown complete" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_requests_beyond_max_num_seqs_wait_for_a_free_row(adapters):
    engine = _engine(adapters, max_num_seqs=2)
    jobs = [("d1", [1, 2, 3]), ("d2", [4, 5]), (None, [6]), ("dl", [7, 8, 9, 10]), ("d3", [11])]
    params = SamplingParams(max_tokens=6, temperature=0)
    alone = [engine.generate(ids, name, params).token_ids for name, ids in jobs]
    events = {i: [] for i in range(len(jobs))}
    reqs = [engine.submit(ids, name, params, events[i].append) for i, (name, ids) in enumerate(jobs)]
    deadline = time.monotonic() + 30
    while any(r.finish_reason is None for r in reqs) and time.monotonic() < deadline:
        assert engine.running <= 2
        time.sleep(0.001)
    assert [r.output_ids for r in reqs] == alone
    assert all(events[i][-1].finish_reason == "length" for i in events)
    engine.shutdown()


def test_requests_beyond_the_kv_cache_bound_wait_and_one_too_big_is_refused(adapters):
    probe = _engine(adapters)
    per_token = kv_bytes_per_token(probe.model)
    probe.shutdown()
    config = probe.model.config  # the tiny model: layers × 2 × KV heads × head size × 4 bytes
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert per_token == config.num_hidden_layers * 2 * heads * head_dim * 4
    # room for 2 requests of 4 + 6 = 10 tokens, not 3 (the cache is dense: rows × the longest)
    engine = _engine(adapters, kv_cache_memory_bytes=25 * per_token)
    jobs = [("d1", [1, 2, 3, 4]), ("d2", [4, 5, 6, 7]), (None, [6, 7, 8, 9]), ("dl", [7, 8, 9, 10])]
    params = SamplingParams(max_tokens=6, temperature=0)
    alone = [engine.generate(ids, name, params).token_ids for name, ids in jobs]
    reqs = [engine.submit(ids, name, params, lambda event: None) for name, ids in jobs]
    deadline = time.monotonic() + 30
    while any(r.finish_reason is None for r in reqs) and time.monotonic() < deadline:
        assert engine.running <= 2
        time.sleep(0.001)
    assert [r.output_ids for r in reqs] == alone
    with pytest.raises(ValueError, match="KV cache.*--kv-cache-memory-bytes"):
        engine.submit(list(range(1, 21)), None, SamplingParams(max_tokens=6), lambda event: None)
    engine.shutdown()


def test_the_decode_cache_writes_in_place_and_equals_concatenation():
    from transformers import DynamicCache

    from prolora.inference.engine import CACHE_SLACK, _growing_layer

    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(3, 2, 5, 4, generator=g), torch.randn(3, 2, 5, 4, generator=g)
    cache = DynamicCache([(keys, values)])
    layer = cache.layers[0]
    layer.__class__ = _growing_layer(type(layer))
    ref_k, ref_v = keys, values
    for step in range(2 * CACHE_SLACK + 7):  # runs out of room twice
        if step == 40:  # rows leave, as Engine._drop: the layer gets new tensors, then a new buffer
            layer.keys, layer.values = layer.keys[[0, 2]], layer.values[[0, 2]]
            ref_k, ref_v = ref_k[[0, 2]], ref_v[[0, 2]]
        k, v = (
            torch.randn(ref_k.shape[0], 2, 1, 4, generator=g),
            torch.randn(ref_k.shape[0], 2, 1, 4, generator=g),
        )
        out_k, out_v = cache.update(k, v, 0)
        ref_k, ref_v = torch.cat([ref_k, k], -2), torch.cat([ref_v, v], -2)
        assert torch.equal(out_k, ref_k) and torch.equal(out_v, ref_v)
        assert layer.keys is out_k and cache.get_seq_length() == ref_k.shape[-2]
    assert layer._room[0].shape[-2] - ref_k.shape[-2] <= CACHE_SLACK  # the spare room stays bounded
