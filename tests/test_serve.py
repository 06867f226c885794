"""``prolora serve`` end to end: a live uvicorn server on 127.0.0.1, talked to with the official openai client.

The model is a tiny random Llama over a byte-level tokenizer; adapters are random PRoLoRA and PEFT LoRA ones.
Served greedy answers are checked against ``prolora generate`` (Hugging Face ``generate`` on a PeftModel), and
answers of a concurrent mixed batch against the same requests sent one at a time.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from serve_utils import LiveServer, save_lora, save_model, save_prolora

from prolora.cli import main
from prolora.inference.engine import SamplingParams
from prolora.inference.server import build_engine, create_app

KEY = "test-key"
BASE = "tiny-base"
CHAT = [{"role": "user", "content": "Say something"}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = save_model(root / "model")
    run = root / "run_pa"  # a `prolora train` run directory: adapter/ + run_config.json
    save_prolora(run / "adapter", seed=1)
    (run / "run_config.json").write_text(json.dumps({"model": str(model), "chat_format": "tulu"}))
    return {
        "root": root,
        "model": model,
        "pa": run,
        "pb": save_prolora(root / "pb", seed=2, unshared_r=0),
        "lo": save_lora(root / "lo", seed=3),
        "pc": save_prolora(root / "pc", seed=4),
        "other": save_prolora(root / "spare", seed=5),
    }


@pytest.fixture(scope="module")
def server(files):
    engine = build_engine(
        str(files["model"]),
        [f"pa={files['pa']}", f"pb={files['pb']}", f"lo={files['lo']}", f"pc={files['pc']}"],
    )
    live = LiveServer(create_app(engine, BASE, api_key=KEY))
    live.engine = engine
    yield live
    live.stop()
    assert not engine.accepting and engine.running == 0


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def _chat(client, model, messages=CHAT, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=messages, **kw)


def test_models_lists_the_base_and_each_adapter_with_its_parent(client):
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {BASE, "pa", "pb", "lo", "pc"}
    assert models["pa"].model_extra["parent"] == BASE and models[BASE].model_extra["parent"] is None


@pytest.mark.parametrize("name", ["pa", "lo", "base"])
def test_served_greedy_answer_equals_prolora_generate(client, files, capsys, name):
    args = [
        "generate",
        "Say something",
        "--max-new-tokens",
        "12",
        "--model",
        str(files["model"]),
        "--chat-format",
        "tulu",
    ]
    if name != "base":
        args += ["--adapter", f"{name}={files[name]}"]
    assert main(args) == 0
    expected = capsys.readouterr().out.strip()
    reply = _chat(client, BASE if name == "base" else name)
    assert reply.choices[0].message.content.strip() == expected
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 0


def test_adapters_change_the_answer(client):
    answers = {name: _chat(client, name).choices[0].message.content for name in (BASE, "pa", "pb", "lo")}
    assert len(set(answers.values())) == 4


def test_each_row_of_a_concurrent_mixed_batch_equals_that_request_alone(client, server):
    jobs = [
        (name, prompt)
        for prompt in ("One", "Two words", "A somewhat longer prompt here")
        for name in ("pa", "pb", "lo", "pc", BASE)
    ]
    alone = {
        job: client.completions.create(model=job[0], prompt=job[1], max_tokens=10, temperature=0)
        .choices[0]
        .text
        for job in jobs
    }
    steps = server.engine.counters["decode_steps"]
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = dict(
            zip(
                jobs,
                pool.map(
                    lambda job: (
                        client.completions.create(model=job[0], prompt=job[1], max_tokens=10, temperature=0)
                        .choices[0]
                        .text
                    ),
                    jobs,
                ),
                strict=False,
            )
        )
    assert together == alone
    assert server.engine.counters["decode_steps"] - steps < 9 * len(jobs) / 2  # rows shared decode steps


def test_streaming_chat_and_completion_end_with_done(client, server):
    full = _chat(client, "pb", max_tokens=20).choices[0].message.content
    chunks = list(_chat(client, "pb", max_tokens=20, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert [c.choices[0].delta.role for c in chunks] == ["assistant"] + [None] * (
        len(chunks) - 1
    )  # as OpenAI
    text = client.completions.create(model="lo", prompt="abc", max_tokens=15, temperature=0).choices[0].text
    streamed = list(
        client.completions.create(model="lo", prompt="abc", max_tokens=15, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed) == text
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "lo", "prompt": "abc", "max_tokens": 3, "stream": True},
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_sampling_seed_stop_and_max_tokens(client):
    def sample(seed):
        return (
            client.completions.create(
                model="pa", prompt="Hi", max_tokens=16, temperature=1.0, top_p=0.9, seed=seed
            )
            .choices[0]
            .text
        )

    assert sample(7) == sample(7)
    assert len({sample(s) for s in range(4)}) > 1
    greedy = client.completions.create(model="pa", prompt="Hi", max_tokens=16, temperature=0)
    assert greedy.choices[0].finish_reason == "length" and greedy.usage.completion_tokens == 16
    text = greedy.choices[0].text
    stop = text[5:8]
    cut = client.completions.create(model="pa", prompt="Hi", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="pa", prompt="Hi", max_tokens=16, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.choices[0].text


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, server):
    with pytest.raises(openai.NotFoundError) as err:
        _chat(client, "nope")
    assert "nope" in err.value.message and BASE in err.value.message and "pa" in err.value.message
    assert err.value.body["type"] == "not_found_error"
    for bad in ({"temperature": 5}, {"max_tokens": 0}, {"top_p": 0}):
        with pytest.raises(openai.BadRequestError):
            _chat(client, "pa", **bad)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="pa", prompt="Hi", max_tokens=2, logprobs=21)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        _chat(client, "pa", top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="pa", prompt="Hi", max_tokens=9000)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="pa", messages=[{"role": "wizard", "content": "x"}])
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(server.url + "/v1/completions", headers=headers, content=b"{not json")
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(server.url + "/v1/completions", headers=headers, json={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(server.url + "/health").status_code == 200
    assert _chat(client, "pa").choices[0].message.content


def test_load_and_unload_while_serving(client, server, files, tmp_path):
    def post(path, body):
        return httpx.post(server.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"})

    stream = _chat(client, "pc", max_tokens=200, stream=True)
    first = next(iter(stream))  # pc is now in flight
    assert post("/v1/unload_lora_adapter", {"lora_name": "pc"}).status_code == 409
    r = post("/v1/load_lora_adapter", {"lora_name": "new", "lora_path": str(files["other"])})
    assert r.status_code == 200, r.text
    assert _chat(client, "new").choices[0].message.content
    rest = "".join(c.choices[0].delta.content or "" for c in stream)
    assert first is not None and rest
    assert post("/v1/unload_lora_adapter", {"lora_name": "new"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        _chat(client, "new")
    assert post("/v1/unload_lora_adapter", {"lora_name": "new"}).status_code == 404
    # missing, corrupt and mismatched adapters: 400 naming the reason
    r = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "missing")})
    assert r.status_code == 400 and "not found" in r.json()["error"]["message"]
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text((files["pc"] / "adapter_config.json").read_text())
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 20)
    r = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(corrupt)})
    assert r.status_code == 400 and "safetensors" in r.json()["error"]["message"]
    from conftest import make_tiny_llama

    from prolora import PRoLoRAConfig, get_prolora_model

    get_prolora_model(make_tiny_llama(), PRoLoRAConfig(target_modules=["q_proj"])).save_pretrained(
        tmp_path / "mismatch"
    )
    r = post("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "mismatch")})
    assert r.status_code == 400 and "another base model" in r.json()["error"]["message"]
    assert (
        post("/v1/load_lora_adapter", {"lora_name": "pa", "lora_path": str(files["other"])}).status_code
        == 400
    )
    assert {m.id for m in client.models.list().data} == {BASE, "pa", "pb", "lo", "pc"}


def test_client_disconnect_frees_the_slot_and_metrics(client, server):
    engine = server.engine
    aborted = engine.counters["aborted"]
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "pb", "prompt": "abc", "max_tokens": 2000, "stream": True},
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break
    deadline = time.monotonic() + 60  # generous: a loaded CI machine
    while (engine.running or engine.registry.entries["pb"].pins) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.running == 0 and engine.registry.entries["pb"].pins == 0
    assert engine.counters["aborted"] == aborted + 1
    # a non-streaming request whose client gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            server.url + "/v1/completions",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=1.0,
            json={"model": "pb", "prompt": "abc", "max_tokens": 8000, "ignore_eos": True},
        )
    deadline = time.monotonic() + 60
    while (engine.running or engine.registry.entries["pb"].pins) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.running == 0 and engine.registry.entries["pb"].pins == 0
    assert engine.counters["aborted"] == aborted + 2, engine.counters
    text = httpx.get(server.url + "/metrics").text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["prolora_adapters_resident"] == 4
    assert values["prolora_adapter_bytes_resident"] == engine.bank.resident_bytes > 0
    assert values["prolora_requests_total"] >= 1 and values["prolora_generation_tokens_total"] > 0
    assert values["prolora_queue_length"] == 0 and values["prolora_requests_running"] == 0


def test_chat_uses_the_tokenizer_template_unless_the_run_recorded_tulu(files):
    """An adapter without a run (and the base model) is prompted with the tokenizer's chat template; an
    adapter whose training run recorded the Tulu format keeps it."""
    from prolora.inference.generation import Generator, load_generator

    engine = build_engine(str(files["model"]), [f"pa={files['pa']}", f"pb={files['pb']}"])
    engine.tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    live = LiveServer(create_app(engine, BASE))
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=30)
        for name, chat_format in (("pb", "template"), ("pa", "tulu")):
            generator = load_generator(str(files["model"]), [f"{name}={files[name]}"], chat_format)
            generator.tokenizer.chat_template = engine.tokenizer.chat_template
            assert isinstance(generator, Generator)
            expected = generator.reply(CHAT, max_new_tokens=12).text
            assert _chat(client, name).choices[0].message.content.strip() == expected
    finally:
        live.stop()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {KEY}", 200),
        (f"bearer {KEY}", 200),  # RFC 7235: the scheme is case-insensitive (before: 401)
        (f"BEARER  {KEY}", 200),
        (f"Bearer {KEY}x", 401),
        (f"Basic {KEY}", 401),
        ("Bearer", 401),
        (None, 401),
    ],
)
def test_the_bearer_scheme_is_case_insensitive_and_the_key_exact(server, authorization, status):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = httpx.get(server.url + "/v1/models", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"]["type"] == "authentication_error"


def _serve_key(monkeypatch, argv: list[str]) -> tuple[int, dict]:
    """Run ``prolora serve ARGV`` up to the app; returns the exit status and what create_app was given."""
    import prolora.cli.serve
    import prolora.inference.server as server_module

    given = {}
    monkeypatch.setattr(prolora.cli.serve, "set_threads", lambda threads: (1, "test"))  # torch's stays

    def create_app(engine, base_name, api_key=None, *args, **kwargs):
        given["api_key"] = api_key
        raise ValueError("stop before serving")

    monkeypatch.setattr(server_module, "build_engine", lambda *args, **kwargs: type("E", (), {})())
    monkeypatch.setattr(server_module, "create_app", create_app)
    return main(["serve", "--port", "0", *argv]), given


def test_the_api_key_comes_from_the_flag_a_file_or_prolora_api_key(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PROLORA_API_KEY", raising=False)
    assert _serve_key(monkeypatch, []) == (2, {"api_key": None})
    monkeypatch.setenv("PROLORA_API_KEY", "from-env\n")
    assert _serve_key(monkeypatch, []) == (2, {"api_key": "from-env"})
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o600)
    assert _serve_key(monkeypatch, ["--api-key-file", str(key_file)]) == (2, {"api_key": "from-file"})
    assert _serve_key(monkeypatch, ["--api-key", "from-flag"]) == (2, {"api_key": "from-flag"})
    out = capsys.readouterr().out
    assert "API key: from $PROLORA_API_KEY" in out and f"API key: from --api-key-file {key_file}" in out
    assert "from-env" not in out and "from-file" not in out  # the key itself is never printed
    # a key file others can read gets a warning; an empty key is refused before the model loads
    key_file.chmod(0o644)
    assert _serve_key(monkeypatch, ["--api-key-file", str(key_file)])[1] == {"api_key": "from-file"}
    assert f"{key_file} is readable by other users; chmod 600" in capsys.readouterr().err
    key_file.write_text("\n")
    assert _serve_key(monkeypatch, ["--api-key-file", str(key_file)]) == (2, {})
    assert "the API key from --api-key-file" in capsys.readouterr().err
    assert _serve_key(monkeypatch, ["--api-key-file", str(tmp_path / "missing")]) == (2, {})
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source at a time
        main(["serve", "--api-key", "a", "--api-key-file", str(key_file)])


def test_the_base_model_has_one_default_chat_format_in_generate_and_serve(files, tmp_path, capsys):
    """Without --chat-format, the base model is prompted with the tokenizer's chat template, in `prolora
    generate` (before: the Tulu format) as in `prolora serve`; adapters keep their run's format."""
    from transformers import AutoTokenizer

    model = tmp_path / "templated"
    shutil.copytree(files["model"], model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tokenizer.save_pretrained(model)
    argv = ["generate", "Say something", "--max-new-tokens", "12", "--model", str(model)]
    assert main(argv) == 0
    generated = capsys.readouterr().out.strip()
    assert main([*argv, "--chat-format", "tulu"]) == 0
    assert capsys.readouterr().out.strip() != generated  # the format matters for this prompt
    engine = build_engine(str(model), [f"pa={files['pa']}"])
    live = LiveServer(create_app(engine, BASE))
    try:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0, timeout=30)
        assert _chat(client, BASE).choices[0].message.content.strip() == generated
        # the adapter of a run that recorded tulu keeps it, in generate (--use pa) as in serve
        assert main([*argv, "--adapter", f"pa={files['pa']}"]) == 0
        assert _chat(client, "pa").choices[0].message.content.strip() == capsys.readouterr().out.strip()
        assert main([*argv, "--adapter", f"pa={files['pa']}", "--use", "base"]) == 0
        assert capsys.readouterr().out.strip() == generated
    finally:
        live.stop()


# ------------------------------------------------------------------------------------ OpenAI fields
def _reference_logprobs(files, adapter, ids: list[int]) -> torch.Tensor:
    """log_softmax of the logits at every position of ``ids`` (the served model loaded on its own, with
    the adapter through stock PEFT): row p is the distribution of token p + 1."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(files["model"])).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(files[adapter] / "adapter"))
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_logprobs_and_echo_equal_the_model_alone(client, server, files):
    tok = server.engine.tokenizer
    out = client.completions.create(
        model="pa",
        prompt="Hello",
        max_tokens=6,
        temperature=0,
        logprobs=3,
        echo=True,
        extra_body={"ignore_eos": True},  # six tokens, whatever they are
    )
    choice = out.choices[0]
    lp = choice.logprobs
    prompt_ids = tok.encode("Hello")
    eos = tok.eos_token
    assert choice.text.startswith("Hello") and "".join(lp.tokens).replace(eos, "") == choice.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # the first prompt token
    assert len(lp.tokens) == len(prompt_ids) + out.usage.completion_tokens == len(prompt_ids) + 6
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    ids = prompt_ids + server.engine.generate(prompt_ids, "pa", params, timeout=60).token_ids
    assert lp.tokens == [tok.decode([i]) for i in ids]
    ref = _reference_logprobs(files, "pa", ids)
    for k in range(1, len(ids)):  # prompt and generated tokens alike
        assert abs(lp.token_logprobs[k] - float(ref[k - 1, ids[k]])) < 1e-4
        top = ref[k - 1].topk(3)  # as OpenAI's dict: token text -> logprob (byte tokens may share a text)
        expected = {}
        for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            expected.setdefault(tok.decode([i]), v)  # the most likely token of a text gives its value
        assert lp.top_logprobs[k].keys() == expected.keys()
        assert list(lp.top_logprobs[k].values()) == pytest.approx(list(expected.values()), abs=1e-4)
    for k in range(len(prompt_ids), len(ids)):  # greedy: the generated token is the most likely one
        assert lp.token_logprobs[k] == pytest.approx(float(ref[k - 1].max()), abs=1e-4)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))]

    chat = _chat(client, BASE, max_tokens=5, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert [c.token for c in content][:1] == [
        tok.decode([t]) for t in tok.encode(chat.choices[0].message.content)
    ][:1] or not chat.choices[0].message.content
    assert all(
        len(c.top_logprobs) == 2 and c.logprob == pytest.approx(c.top_logprobs[0].logprob) for c in content
    )
    streamed = list(_chat(client, BASE, max_tokens=5, logprobs=True, top_logprobs=2, stream=True))
    tokens = [
        c.token
        for chunk in streamed
        if chunk.choices and chunk.choices[0].logprobs
        for c in chunk.choices[0].logprobs.content
    ]
    assert tokens == [c.token for c in content]


def test_n_prompt_lists_and_usage_in_streams(client):
    one = client.completions.create(model="lo", prompt="abc", max_tokens=8, temperature=0)
    greedy = client.completions.create(model="lo", prompt="abc", max_tokens=8, temperature=0, n=2)
    assert [c.index for c in greedy.choices] == [0, 1]
    assert [c.text for c in greedy.choices] == [one.choices[0].text] * 2
    assert greedy.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted once
    assert greedy.usage.completion_tokens == 2 * one.usage.completion_tokens
    sampled = client.completions.create(model="lo", prompt="abc", max_tokens=12, temperature=1.0, n=3, seed=5)
    again = client.completions.create(model="lo", prompt="abc", max_tokens=12, temperature=1.0, n=3, seed=5)
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]  # reproducible
    assert len({c.text for c in sampled.choices}) > 1  # each choice its own sample

    prompts = ["abc", "Another prompt"]
    alone = [
        client.completions.create(model="pa", prompt=p, max_tokens=6, temperature=0).choices[0].text
        for p in prompts
    ]
    batch = client.completions.create(model="pa", prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices] == [
        alone[0],
        alone[0],
        alone[1],
        alone[1],
    ]  # prompt i, choice j: i·n + j
    ids = client.completions.create(model="pa", prompt=[[97, 98], [99]], max_tokens=3, temperature=0)
    assert len(ids.choices) == 2 and ids.usage.prompt_tokens == 3

    chunks = list(
        client.completions.create(
            model="pa",
            prompt=prompts,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    texts = ["", ""]
    for c in chunks[:-1]:
        texts[c.choices[0].index] += c.choices[0].text
    assert texts == alone
    chat = list(_chat(client, "pb", stream=True, stream_options={"include_usage": True}))
    whole = _chat(client, "pb")
    assert chat[-1].usage.model_dump() == whole.usage.model_dump()
    plain = list(_chat(client, "pb", stream=True))
    assert all(c.usage is None for c in plain)
