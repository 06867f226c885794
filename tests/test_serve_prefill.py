"""Batched and chunked prefill under a token budget: a burst of requests over several adapters and prompt
lengths, prompts longer than the budget, and requests joining mid-decode each get their greedy answer
alone (Hugging Face ``generate`` on a PeftModel; where a near-tie flips a token in fp32, the two tokens'
reference logits are within 1e-4 and the comparison stops there)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from serve_utils import hf_greedy, save_lora, save_prolora
from test_eval_cli import make_tiny_model

from prolora.inference.adapter_bank import AdapterBank
from prolora.inference.engine import Engine, SamplingParams
from prolora.inference.registry import AdapterRegistry

EOS = 256  # the tiny model's end of text


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefill")
    for i, name in enumerate(("p1", "p2", "p3")):
        save_prolora(folder / name, seed=30 + i)
    save_lora(folder / "lo", seed=40)
    return folder


def _engine(adapters_dir, budget, max_batch=32, start=True):
    model, tokenizer = make_tiny_model()
    registry = AdapterRegistry(AdapterBank(model), adapters_dir)
    engine = Engine(model, tokenizer, registry, max_batch, max_num_batched_tokens=budget)
    return engine.start() if start else engine


def assert_greedy_alone(got: list[int], reference: tuple[list[int], list[torch.Tensor]], n: int) -> None:
    tokens, scores = reference
    for k, (g, r) in enumerate(zip(got, tokens, strict=False)):
        if g != r:  # only a near-tie may flip a token: both logits equal within 1e-4 alone
            assert abs(float(scores[k][g] - scores[k][r])) < 1e-4, (k, got, tokens)
            return
    assert len(got) == n or got[-1] == EOS, got


JOBS = [  # (adapter, prompt, max_tokens): lengths 1 to 61 characters (byte tokens)
    ("p1", "Hello", 14),
    ("p2", "A much longer prompt that the token budget splits into chunks, surely", 10),
    (None, "x", 12),
    ("lo", "Mid-length prompt here", 16),
    ("p3", "Other", 6),
    ("p1", "Second request of adapter p1, longish too", 9),
    ("p2", "ab", 11),
]


@pytest.mark.parametrize("budget", [16, 512])
def test_a_burst_prefills_in_batches_and_each_row_equals_its_request_alone(adapters, budget):
    engine = _engine(adapters, budget, start=False)  # the whole burst waits before the first step
    try:
        ids = [engine.tokenizer.encode(p) for _, p, _ in JOBS]
        reqs, errors = [], []
        for (name, _, n), prompt in zip(JOBS, ids, strict=True):
            params = SamplingParams(max_tokens=n, temperature=0)
            reqs.append(engine.submit(prompt, name, params, lambda e: e.error and errors.append(e.error)))
        engine.start()
        deadline = time.monotonic() + 60
        while any(r.finish_reason is None for r in reqs) and time.monotonic() < deadline:
            time.sleep(0.01)
        prefills = engine.counters["prefill_steps"]
    finally:
        engine.shutdown()
    for (name, _, n), prompt, req in zip(JOBS, ids, reqs, strict=True):
        assert req.finish_reason in ("stop", "length"), errors
        assert_greedy_alone(req.output_ids, hf_greedy(adapters / name if name else None, prompt, n), n)
    longest = max(len(p) for p in ids)
    if budget >= len(JOBS) * longest:
        assert prefills == 1  # the whole burst in one forward
    else:  # chunks: at least the longest prompt's chunk count, far fewer forwards than prompt tokens
        assert -(-longest // budget) <= prefills < sum(-(-len(p) // budget) for p in ids)


def test_running_streams_keep_flowing_while_a_long_prompt_prefills_in_chunks(adapters):
    engine = _engine(adapters, budget=8)
    try:
        long_prompt = engine.tokenizer.encode("a prompt of about eighty byte tokens, " * 2)[:80]
        seen = []  # the long request's prefill progress at each token of the running stream
        holder = {}
        first = threading.Event()

        def sink(event):
            if "long" in holder:
                seen.append(holder["long"].prefilled)
            first.set()

        running = engine.submit(
            engine.tokenizer.encode("Run"),
            "p3",
            SamplingParams(max_tokens=60, temperature=0, ignore_eos=True),
            sink,
        )
        assert first.wait(30)
        holder["long"] = engine.submit(
            long_prompt, "p1", SamplingParams(max_tokens=5, temperature=0), lambda e: None
        )
        deadline = time.monotonic() + 60
        while (
            running.finish_reason is None or holder["long"].finish_reason is None
        ) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.shutdown()
    assert [p for p in seen if 0 < p < len(long_prompt)], seen  # tokens arrived between prefill chunks
    assert_greedy_alone(holder["long"].output_ids, hf_greedy(adapters / "p1", long_prompt, 5), 5)
    assert_greedy_alone(
        running.output_ids, hf_greedy(adapters / "p3", engine.tokenizer.encode("Run"), 60), 60
    )


def test_requests_joining_mid_decode_get_their_answer_alone(adapters):
    engine = _engine(adapters, budget=24, max_batch=4)
    results = {}

    def go(i, job):
        time.sleep(0.01 * i)
        name, prompt, n = job
        results[i] = engine.generate(
            engine.tokenizer.encode(prompt), name, SamplingParams(max_tokens=n, temperature=0)
        )

    threads = [threading.Thread(target=go, args=(i, job)) for i, job in enumerate(JOBS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        engine.shutdown()
    for i, (name, prompt, n) in enumerate(JOBS):
        ids = engine.tokenizer.encode(prompt)
        assert_greedy_alone(results[i].token_ids, hf_greedy(adapters / name if name else None, ids, n), n)


def test_token_budget_is_checked():
    model, tokenizer = make_tiny_model()
    with pytest.raises(ValueError, match="max_num_batched_tokens=0"):
        Engine(model, tokenizer, AdapterRegistry(AdapterBank(model)), max_num_batched_tokens=0)


@pytest.mark.slow
def test_embedded_model_burst_with_chunks_equals_each_request_alone(smollm2, tmp_path):
    from test_tuner import _randomise

    from prolora import PRoLoRAConfig, get_prolora_model

    model, tokenizer = smollm2
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for i in range(2):  # two random PRoLoRA r=8 u=1 m=n=7 adapters (the paper's setting)
        config = PRoLoRAConfig(r=8, unshared_r=1, sharing_rate_a=7, sharing_rate_b=7, target_modules=targets)
        pm = get_prolora_model(model, config)
        _randomise(pm, std=0.05, seed=50 + i)
        pm.save_pretrained(tmp_path / f"s{i}")
        pm.unload()
    bank = AdapterBank(model)
    try:
        engine = Engine(
            model, tokenizer, AdapterRegistry(bank, tmp_path), max_num_seqs=8, max_num_batched_tokens=32
        )
        jobs = [
            ("s0", "Write one sentence about the sea."),
            ("s1", "List three colours of the rainbow and explain, briefly, where the rainbow comes from."),
            (None, "What is 2 + 3?"),
            ("s0", "Hi"),
        ]
        params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=2)
        reqs = [engine.submit(tokenizer.encode(p), name, params, lambda e: None) for name, p in jobs]
        engine.start()
        deadline = time.monotonic() + 300
        while any(r.finish_reason is None for r in reqs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r.finish_reason for r in reqs] == ["length"] * len(jobs)
        # 4 prompts of 3 to 20 tokens in budget-32 forwards: chunks, yet fewer forwards than prompt tokens
        assert 2 <= engine.counters["prefill_steps"] < sum(len(r.prompt_ids) for r in reqs)
        alone = [engine.generate(tokenizer.encode(p), name, params, timeout=300) for name, p in jobs]
        for req, single in zip(reqs, alone, strict=True):
            for k, (got, want) in enumerate(zip(req.output_ids, single.token_ids, strict=True)):
                if got != want:  # a near-tie: the two best tokens alone within 1e-4
                    top = req.logprobs[k].top
                    assert abs(top[0][1] - top[1][1]) < 1e-4, (k, req.output_ids, single.token_ids)
                    break
    finally:
        engine.shutdown()
        bank.close()
