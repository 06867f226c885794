"""``prolora serve`` against hostile clients: every bad request gets an OpenAI-shaped 4xx and the server keeps
serving, with nothing left behind (no pinned adapter, no failed batch). Live uvicorn server on 127.0.0.1,
tiny random Llama, random adapters (tests/serve_utils.py)."""

from __future__ import annotations

import contextlib
import json

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file
from serve_utils import LiveServer, save_lora, save_model, save_prolora

from prolora.inference.server import build_engine, create_app

KEY = "hostile-key"
BASE = "tiny-base"
HEADERS = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    return {
        "root": root,
        "model": save_model(root / "model"),
        "pa": save_prolora(root / "pa", seed=1),
        "lo": save_lora(root / "lo", seed=3),
        "spare": save_prolora(root / "spare", seed=5),
    }


@pytest.fixture(scope="module")
def server(files):
    engine = build_engine(str(files["model"]), [f"pa={files['pa']}", f"lo={files['lo']}"])
    live = LiveServer(create_app(engine, BASE, api_key=KEY))
    live.engine = engine
    yield live
    live.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as client:
        yield client


def _complete(http, **body):
    return http.post("/v1/completions", json={"model": "pa", "prompt": "Hi", "max_tokens": 4, **body})


def _assert_error(response, status: int, *words: str, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param


def _serves(http):
    """The server still answers a normal request, on the same (keep-alive) connection."""
    r = _complete(http, temperature=0)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length"), r.text


def test_a_seed_outside_64_bits_is_a_400_naming_seed_and_leaves_the_adapter_unpinned(http, server, files):
    # before: torch's "Overflow when unpacking long long" after the adapter was pinned, so it stayed pinned
    # forever (unload answered 409, LRU eviction skipped it)
    assert (
        http.post(
            "/v1/load_lora_adapter", json={"lora_name": "seeded", "lora_path": str(files["spare"])}
        ).status_code
        == 200
    )
    for seed in (2**64, -(2**63) - 1, 2**70):
        _assert_error(_complete(http, model="seeded", seed=seed), 400, "seed", str(seed))
    assert server.engine.registry.entries["seeded"].pins == 0
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "seeded"}).status_code == 200
    ok = [
        _complete(http, seed=s, temperature=1.0).json()["choices"][0]["text"] for s in (2**64 - 1, 2**64 - 1)
    ]
    assert ok[0] == ok[1]  # the largest 64-bit seed is accepted and reproducible
    _serves(http)


@pytest.mark.parametrize("temperature", [1e-300, 1e-30, 1e-7])
def test_a_tiny_temperature_is_greedy_not_a_failed_batch(http, temperature):
    # before: logits / 1e-300 overflowed float32, the probabilities were NaN and torch.multinomial raised
    # inside the engine loop: a 500 for this request and an abort for every other request in the batch
    greedy = _complete(http, temperature=0, max_tokens=6).json()["choices"][0]["text"]
    r = _complete(http, temperature=temperature, max_tokens=6)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == greedy


@pytest.mark.parametrize(
    "route, body, param",
    [
        ("/v1/completions", b'{"model": "pa", "prompt": "a\\ud800b", "max_tokens": 2}', "prompt"),
        ("/v1/completions", b'{"model": "pa", "prompt": ["\\udc00"], "max_tokens": 2}', "prompt.0"),
        ("/v1/completions", b'{"model": "\\ud800", "prompt": "a", "max_tokens": 2}', "model"),
        ("/v1/completions", b'{"model": "pa", "prompt": "a", "stop": "\\ud800", "max_tokens": 2}', "stop"),
        (
            "/v1/chat/completions",
            b'{"model": "pa", "messages": [{"role": "user", "content": "\\udfff"}]}',
            "messages.0.content",
        ),
        ("/v1/load_lora_adapter", b'{"lora_name": "x\\ud800", "lora_path": "/nowhere"}', "lora_name"),
    ],
)
def test_lone_surrogates_are_a_400_not_a_500(http, route, body, param):
    # before: the tokenizer (or the response encoder) raised: a bare 500 "Internal Server Error" and a
    # reset keep-alive connection
    r = http.post(route, content=body, headers={"Content-Type": "application/json"})
    _assert_error(r, 400, param=param)
    assert "surrogate" in r.json()["error"]["message"] or "unicode" in r.json()["error"]["message"]
    _serves(http)


def test_malformed_json_names_the_problem_and_its_place(http):
    r = http.post(
        "/v1/completions",
        content=b'{"model": "pa", "prompt": }',
        headers={"Content-Type": "application/json"},
    )
    _assert_error(r, 400, "not valid JSON", "character")
    assert r.json()["error"]["param"] is None
    r = http.post(
        "/v1/completions",
        content=b'{"model": "pa", "prompt": "\xff"}',
        headers={"Content-Type": "application/json"},
    )
    _assert_error(r, 400)
    assert r.json()["error"]["type"] == "invalid_request_error"
    _serves(http)


def test_a_lora_adapter_holding_nan_is_refused_at_load(http, files, tmp_path):
    # before: it loaded, and every answer of its rows was argmax over NaN logits (silently wrong tokens)
    bad = save_lora(tmp_path / "nan_lora", seed=7)
    tensors = load_file(bad / "adapter_model.safetensors")
    key = min(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, bad / "adapter_model.safetensors")
    r = http.post("/v1/load_lora_adapter", json={"lora_name": "nan", "lora_path": str(bad)})
    _assert_error(r, 400, "NaN", key, param="lora_path")
    assert "nan" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    tensors[key][0, 0] = float("inf")
    save_file(tensors, bad / "adapter_model.safetensors")
    _assert_error(
        http.post("/v1/load_lora_adapter", json={"lora_name": "nan", "lora_path": str(bad)}), 400, "inf"
    )
    assert torch.isfinite(load_file(files["lo"] / "adapter_model.safetensors")[key]).all()
    _serves(http)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "-1"], "--port -1 must be in [0, 65535]"),  # before: a traceback after the model loaded
        (["--port", "70000"], "--port 70000 must be in [0, 65535]"),
        (["--expanded-cache-mb", "-5"], "--expanded-cache-mb -5.0 must be a finite number"),  # before: served
        (
            ["--expanded-cache-mb", "nan"],
            "--expanded-cache-mb nan must be a finite number",
        ),  # "cannot convert"
        (["--max-resident", "0"], "--max-resident 0 must be at least 1"),
        (["--max-request-bytes", "0"], "--max-request-bytes 0 must be at least 1"),
        (["--max-num-batched-tokens", "0"], "--max-num-batched-tokens 0 must be at least 1"),
        (["--max-num-seqs", "0"], "--max-num-seqs 0 must be at least 1"),
        (["--threads", "0"], "--threads 0: use 1 or more threads"),
        (["--host", "no-such-host.invalid"], "cannot listen on --host no-such-host.invalid"),
    ],
)
def test_bad_serve_flags_fail_in_one_line_before_the_model_loads(argv, message, capsys, tmp_path):
    from prolora.cli import main

    assert main(["serve", "--model", str(tmp_path / "never-loaded"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prolora serve: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "size"),
    [("4294967296", 2**32), ("4G", 4 * 2**30), ("4g", 4 * 10**9), ("1.5M", 3 * 2**19), ("512k", 512_000)],
)
def test_kv_cache_memory_bytes_reads_sizes_as_vllm(text, size):
    from prolora.cli.serve import byte_size

    assert byte_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("4 GB", "'4 GB' is not a size"),
        ("0", "'0' is less than one byte"),
        ("0.5", "'0.5' is less than one byte"),  # not reported as the truncated 0
    ],
)
def test_a_bad_kv_cache_size_names_the_value_and_the_form(text, message, capsys):
    from prolora.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--kv-cache-memory-bytes", text])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--kv-cache-memory-bytes" in err and message in err and "4G" in err and "Traceback" not in err


def test_a_kv_cache_size_of_any_length_is_read_exactly():
    from prolora.cli.serve import byte_size

    assert byte_size("9" * 400) == 10**400 - 1  # through float: OverflowError (a traceback)
    assert byte_size("0.5K") == 512


def test_serve_on_a_taken_port_fails_in_one_line(capsys, tmp_path):
    import socket

    from prolora.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path / "never-loaded"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--port {port}" in err and "in use" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "name", ["..", ".", "a/b", "a\\b", " x", "x\n", "a\tb", "a\x00b", "-dash", "__base__", "x" * 10_000]
)
def test_load_refuses_names_that_are_not_folder_names_as_a_400_on_lora_name(http, files, name):
    # before: '..', '.', 'a\\b' and 'a\tb' were served names; the others were refused with param lora_path
    r = http.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(files["spare"])})
    _assert_error(r, 400, "adapter name", param="lora_name")
    assert name not in [m["id"] for m in http.get("/v1/models").json()["data"]]
    _serves(http)


def test_shutdown_ends_open_streams_with_an_error_chunk_and_done(files):
    # before (uvicorn.run + lifespan): uvicorn's graceful timeout cancelled the streaming tasks first, so
    # clients got a cut chunked body (httpx.RemoteProtocolError) and no [DONE]; the engine drained after
    import threading

    from serve_utils import free_port

    from prolora.inference.server import graceful_server

    engine = build_engine(str(files["model"]), [f"pa={files['pa']}"])
    port = free_port()
    server = graceful_server(
        create_app(engine, BASE), engine, grace=0.5, host="127.0.0.1", port=port, log_level="warning"
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if server.started:
            break
        threading.Event().wait(0.05)
    lines = []
    body = {
        "model": "pa",
        "prompt": "Hi",
        "max_tokens": 7000,
        "ignore_eos": True,
        "stream": True,
        "temperature": 0,
    }
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line:
                lines.append(line)
            if len(lines) == 3:
                server.should_exit = True  # what uvicorn's SIGTERM handler does
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["code"] == 503 and "shutting down" in error["message"]
    assert 3 <= len(lines) - 2 < 7000 and engine.running == 0


def test_prompts_are_tokenized_off_the_event_loop(files):
    # before: tokenizing a long prompt ran on the event loop: a 2 MB prompt stalled /health and every open
    # stream for about 2 s on the real tokenizer (then got its 400)
    import threading

    engine = build_engine(str(files["model"]), [f"pa={files['pa']}"])
    threads = []

    class Recording:
        def __init__(self, tokenizer):
            self._tokenizer = tokenizer

        def __call__(self, *args, **kwargs):
            threads.append(threading.current_thread())
            return self._tokenizer(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._tokenizer, name)

        def __len__(self):
            return len(self._tokenizer)

    engine.tokenizer = Recording(engine.tokenizer)
    live = LiveServer(create_app(engine, BASE, chat_format="tulu"))
    try:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            assert _complete(http, temperature=0).status_code == 200
            r = http.post(
                "/v1/chat/completions",
                json={"model": "pa", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]},
            )
            assert r.status_code == 200, r.text
    finally:
        live.stop()
    assert len(threads) >= 2 and live.thread not in threads  # live.thread runs uvicorn's event loop


def _tiny_engine(files):
    from test_eval_cli import make_tiny_model

    from prolora.inference.adapter_bank import AdapterBank
    from prolora.inference.engine import Engine
    from prolora.inference.registry import AdapterRegistry

    model, tokenizer = make_tiny_model()
    registry = AdapterRegistry(AdapterBank(model))
    registry.register("pa", files["pa"])
    return Engine(model, tokenizer, registry).start()


def test_engine_refuses_token_ids_outside_the_embedding_without_pinning(files):
    # before: Engine.submit (the Python API) queued them and the prefill's IndexError failed the batch
    from prolora.inference.engine import SamplingParams

    engine = _tiny_engine(files)
    try:
        for bad in ([engine.vocab_size], [-1]):
            with pytest.raises(ValueError, match=r"token ids must be in \[0, "):
                engine.submit(bad, "pa", SamplingParams(max_tokens=2), lambda e: None)
        assert engine.registry.entries["pa"].pins == 0
    finally:
        engine.shutdown()


def test_a_failing_prefill_fails_its_request_alone(files, monkeypatch):
    # before: any exception in one new request's prefill aborted every running request of the batch
    import time

    from prolora.inference.engine import SamplingParams

    engine = _tiny_engine(files)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    alone = engine.generate([1, 2, 3], "pa", params, timeout=60)
    prefill = engine._prefill

    def failing(chunks):  # a batched prefill holding it fails, then each row is retried alone
        if any(req.prompt_ids == [9, 9, 9] for req, _ in chunks):
            raise RuntimeError("injected prefill failure")
        return prefill(chunks)

    monkeypatch.setattr(engine, "_prefill", failing)
    events = []
    try:
        running = engine.submit([1, 2, 3], "pa", params, events.append)
        deadline = time.monotonic() + 120
        while len(running.output_ids) < 3:
            assert running.finish_reason is None and time.monotonic() < deadline, running.finish_reason
            time.sleep(0.005)
        failed = []
        engine.submit([9, 9, 9], "pa", SamplingParams(max_tokens=4, temperature=0), failed.append)
        while running.finish_reason is None:
            assert time.monotonic() < deadline, "the running request was lost"
            time.sleep(0.01)
        assert failed[-1].finish_reason == "abort" and "injected prefill failure" in failed[-1].error
        assert running.finish_reason == "length" and running.output_ids == alone.token_ids
        assert engine.registry.entries["pa"].pins == 0
    finally:
        engine.shutdown()


def test_a_long_stop_list_is_refused_in_a_short_message(http):
    # before: the 400 echoed all 100 strings
    r = _complete(http, stop=["x"] * 100)
    _assert_error(r, 400, "stop holds 100 strings; send at most 4")
    assert len(r.json()["error"]["message"]) < 80
    _serves(http)


@contextlib.contextmanager
def _dir_server(files, folder):
    """A live server of ``pa`` and the adapters of ``folder`` (one, ``d1``, written there), and its client."""
    save_prolora(folder / "d1", seed=11)
    engine = build_engine(str(files["model"]), [f"pa={files['pa']}"], adapters_dir=str(folder))
    live = LiveServer(create_app(engine, BASE))
    try:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            yield http
    finally:
        live.stop()


def test_a_removed_adapters_dir_does_not_turn_models_and_404s_into_500s(files, tmp_path):
    # before: /v1/models and every unknown-model 404 (which lists the models) raised FileNotFoundError: 500
    import shutil

    folder = tmp_path / "adapters"
    with _dir_server(files, folder) as http:
        assert {m["id"] for m in http.get("/v1/models").json()["data"]} == {BASE, "pa", "d1"}
        shutil.rmtree(folder)
        assert {m["id"] for m in http.get("/v1/models").json()["data"]} == {BASE, "pa"}
        _assert_error(_complete(http, model="d1"), 404, "'d1' does not exist", "pa")
        _serves(http)


def test_loading_under_the_name_of_an_adapters_dir_folder_is_refused(files, tmp_path):
    # before: a name from --adapters-dir not yet used was taken over (200), and requests for it ran the
    # other folder's weights; the same name once resident was a 400
    with _dir_server(files, tmp_path / "adapters") as http:
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "d1", "lora_path": str(files["pa"])})
        _assert_error(r, 400, "'d1' is served from --adapters-dir", "pick another name")
        assert _complete(http, model="d1").status_code == 200
        _serves(http)


def test_a_body_over_the_cap_is_a_413_and_the_server_keeps_serving(http, server):
    """A declared Content-Length over the cap is refused unread; a chunked body (no length) once it passes
    the cap; both name the limit and the flag that raises it, and the next request is served."""
    from prolora.inference.server import MAX_REQUEST_BYTES

    big = json.dumps({"model": "pa", "prompt": "x" * MAX_REQUEST_BYTES, "max_tokens": 1}).encode()
    _assert_error(
        http.post("/v1/completions", content=big, headers={"content-type": "application/json"}),
        413,
        f"{MAX_REQUEST_BYTES:,} bytes",
        "--max-request-bytes",
    )

    def chunks():
        for start in range(0, len(big), 2**16):
            yield big[start : start + 2**16]

    with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as fresh:
        _assert_error(
            fresh.post(
                "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
            ),
            413,
            "--max-request-bytes",
        )
    _serves(http)


def test_prompts_times_n_over_the_cap_is_a_400_before_anything_is_queued(http, server):
    # before: a 40 KB body of 2,000 one-token prompts with n=32 queued 64,000 requests and held the
    # server for over five minutes; a 4 MiB body (a million prompts) grew memory without bound
    from prolora.inference.server import MAX_CHOICES

    before = server.engine.counters["requests"]
    prompts = [[5]] * (MAX_CHOICES // 32 + 1)
    r = _complete(http, prompt=prompts, n=32, max_tokens=1)
    _assert_error(r, 400, str(len(prompts) * 32), str(MAX_CHOICES), param="prompt")
    _assert_error(_complete(http, prompt=["a"] * (MAX_CHOICES + 1)), 400, param="prompt")
    assert server.engine.counters["requests"] == before  # refused whole, nothing submitted
    ok = _complete(http, prompt=[[5]] * 4, n=2, max_tokens=1, temperature=0)  # under the cap: served
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 8, ok.text
    _serves(http)


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_stream_options_without_stream_is_a_400_as_openai(http, route):
    # before: accepted and ignored (OpenAI and vLLM answer 400)
    body = {"model": "pa", "max_tokens": 2, "stream_options": {"include_usage": True}}
    body.update({"prompt": "Hi"} if "chat" not in route else {"messages": [{"role": "user", "content": "x"}]})
    _assert_error(http.post(route, json=body), 400, "stream", param="stream_options")
    _serves(http)


def test_a_stop_string_of_a_million_characters_costs_no_more_than_a_short_one(http):
    # before: holding back a possible stop-string prefix tried every prefix length of each stop string on
    # every token (quadratic in its length): four stop strings of 900,000 characters (a 3.6 MB body, under
    # the cap) stalled the engine thread, and every other request with it, for many minutes per token
    greedy = _complete(http, temperature=0, max_tokens=4).json()["choices"][0]["text"]
    stops = [c * 900_000 for c in "abcdefghijklmnopqrstuvwxyz" if c not in greedy][:4]
    r = _complete(http, temperature=0, max_tokens=4, stop=stops)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == greedy  # no stop string occurs: nothing held back or cut
    _serves(http)


@pytest.mark.parametrize("prompt", [[True, False], [1.0, 2.0], [[1], [True]], ["1", 2]])
def test_token_ids_must_be_json_integers(http, prompt):
    # before: [true, false] and [1.0, 2.0] were served as the token ids [1, 0] and [1, 2]
    _assert_error(_complete(http, prompt=prompt), 400, param="prompt")
    _serves(http)


def test_serve_flag_defaults_are_the_engine_and_bank_defaults():
    """The command line states its defaults without importing torch (fast --help); they must stay the
    library's values (one source of truth, checked here)."""
    import argparse

    from prolora.cli import serve
    from prolora.inference.adapter_bank import EXPANDED_CACHE_BYTES, HOT_ADAPTERS
    from prolora.inference.engine import KV_CACHE_MEMORY_BYTES, MAX_NUM_BATCHED_TOKENS, MAX_NUM_SEQS

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args([])
    assert args.max_num_seqs == MAX_NUM_SEQS
    assert args.kv_cache_memory_bytes == KV_CACHE_MEMORY_BYTES
    assert args.max_num_batched_tokens == MAX_NUM_BATCHED_TOKENS
    assert args.expanded_cache_mb * 2**20 == EXPANDED_CACHE_BYTES
    assert f"at most {HOT_ADAPTERS} distinct" in parser.format_help().replace("\n", " ")
