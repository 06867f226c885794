"""vLLM interop check (run by scripts/vllm_interop.sh in the vLLM environment; not part of the test suite).

1. PRoLoRA adapters on the embedded SmolLM2-135M-Instruct (random compact tensors, saved with
   ``save_pretrained``): two checked token for token (pro-a, pro-b) and eight more as traffic (t0..t7), in
   an adapters folder; the embedded model written as a float32 folder for vLLM.
2. Reference: prolora's transformers path (PeftModel with the adapters), greedy, one prompt at a time.
3. vLLM's OpenAI server (``python -m vllm.entrypoints.openai.api_server``, float32) with prolora's plugin
   (resolver on ``PROLORA_VLLM_ADAPTERS_DIR``, runtime LoRA updating on, prolora's vLLM hooks), with as
   many slots as it is asked (``--max-loras``, default 2: no spare slot) and a host cache for all adapters:
   * a mixed batch of requests for the two adapters and the base model, sent at once;
   * traffic: each of t0..t7 once (every slot has held adapters since), the server process tree's RSS
     measured after each adapter entered vLLM's host-side LoRA cache;
   * the mixed batch again (the base rows are the issue-24 check), base alone, adapters alone;
   * ``POST /v1/load_lora_adapter`` with a PRoLoRA folder (then requested), a broken one, a VeRA one, a
     missing path: the statuses;
   * a chat request with prolora's Tulu template (``chat_template``): its prompt tokens and reply against
     prolora's rendering and transformers' greedy reply.
   Every greedy output must equal the reference token for token.
4. With ``--unhooked``: the same traffic and mixed batch on a server with ``PROLORA_VLLM_HOOKS=0`` (vLLM as
   it is: dense exports, the CPU ops' base-row bug), for the RSS per adapter and base rows of today's path.
5. Throughput of the two engines on the embedded model: the same batch of prompts, the same number of new
   tokens (EOS ignored), measured in one run.
Writes ``summary.json`` in the work folder and exits non-zero when any output or status differs.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Q: Tom has 3 apples and buys 5 more. How many apples does he have?\nA:",
    "Once upon a time, in a small village,",
    "List three primary colors:",
    "Translate to French: Good morning, my friend.",
]


def log(message: str) -> None:
    print(f"[interop {time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_adapters(folder: Path, seeds: dict[str, int], std: float, sharing: int = 2) -> None:
    """PRoLoRA adapters with random compact tensors (A and B both non-zero), saved as prolora saves them
    (r = 8, u = 1, m = n = ``sharing``, all linear layers)."""
    import torch
    from peft import get_peft_model

    from prolora import PRoLoRAConfig
    from prolora.base_models import load_model

    todo = {n: s for n, s in seeds.items() if not (folder / n / "adapter_config.json").is_file()}
    if not todo:
        return
    model = get_peft_model(
        load_model(),
        PRoLoRAConfig(
            r=8,
            unshared_r=1,
            sharing_rate_a=sharing,
            sharing_rate_b=sharing,
            lora_alpha=16,
            target_modules=TARGETS,
        ),
    )
    for name, seed in todo.items():
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "prolora_" in pname:
                    p.copy_(torch.randn(p.shape, generator=g) * std)
        model.save_pretrained(folder / name)


def reference(
    base_dir: str, folder: Path, jobs: list[tuple[str | None, list[int]]], max_new: int
) -> list[list[int]]:
    """Greedy continuations with prolora's transformers path (PeftModel + PRoLoRA layers), one at a time."""
    import torch
    from peft import PeftModel

    import prolora  # noqa: F401  (registers PRoLoRA with PEFT)
    from prolora.base_models import load_model

    names = sorted({n for n, _ in jobs if n})
    model = PeftModel.from_pretrained(load_model(), folder / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(folder / name, adapter_name=name)
    model.eval()
    outs = []
    for name, ids in jobs:
        x = torch.tensor([ids])
        with torch.inference_mode():
            if name is None:
                with model.disable_adapter():
                    out = model.generate(input_ids=x, max_new_tokens=max_new, do_sample=False, pad_token_id=0)
            else:
                model.set_adapter(name)
                out = model.generate(input_ids=x, max_new_tokens=max_new, do_sample=False, pad_token_id=0)
        outs.append(out[0, len(ids) :].tolist())
    return outs


def transformers_throughput(
    prompts: list[list[int]],
    new_tokens: int,
    threads: int,
    folder: Path | None = None,
) -> dict:
    """Tokens/s of a batched greedy ``generate`` on the embedded model (left padding, EOS ignored); with
    ``folder``, through prolora's PRoLoRA layers with the batch's rows alternating between pro-a and pro-b
    (PEFT's mixed-batch ``adapter_names``)."""
    import torch

    from prolora.base_models import load_model

    torch.set_num_threads(threads)
    model = load_model().eval()
    kwargs = {}
    if folder is not None:
        from peft import PeftModel

        import prolora  # noqa: F401

        model = PeftModel.from_pretrained(model, folder / "pro-a", adapter_name="pro-a")
        model.load_adapter(folder / "pro-b", adapter_name="pro-b")
        model.eval()
        kwargs["adapter_names"] = [["pro-a", "pro-b"][i % 2] for i in range(len(prompts))]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0, **kwargs
        )  # warm-up
        started = time.perf_counter()
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )
        seconds = time.perf_counter() - started
    generated = (out.shape[1] - width) * len(prompts)
    return {
        "sequences": len(prompts),
        "new_tokens": generated,
        "seconds": seconds,
        "tokens_per_s": generated / seconds,
    }


def post(port: int, path: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def post_status(port: int, path: str, body: dict, timeout: float) -> tuple[int, str]:
    """``(HTTP status, body text)`` of a POST, errors included."""
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def tree_memory(pid: int) -> dict:
    """Resident bytes of a process and all its descendants (vLLM's API server, engine core, workers): ``rss``
    (all resident pages, including file-backed ones such as the mmapped model, which the kernel may drop on
    a busy machine) and ``anon`` (``RssAnon``: the processes' own memory, where an adapter cache lives)."""
    import psutil

    root = psutil.Process(pid)
    total = {"rss": 0, "anon": 0}
    for proc in [root, *root.children(recursive=True)]:
        try:
            total["rss"] += proc.memory_info().rss
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except (psutil.NoSuchProcess, OSError):
            continue
        for line in status.splitlines():
            if line.startswith("RssAnon:"):
                total["anon"] += int(line.split()[1]) * 1024
    return total


def complete(
    port: int, model: str, ids: list[int], max_new: int, timeout: float, ignore_eos: bool = False
) -> list[int]:
    body = {
        "model": model,
        "prompt": ids,
        "max_tokens": max_new,
        "temperature": 0.0,
        "return_token_ids": True,
        "ignore_eos": ignore_eos,
    }
    choice = post(port, "/v1/completions", body, timeout)["choices"][0]
    return choice["token_ids"]


def run_batch(port: int, jobs, max_new: int) -> list[list[int]]:
    """Send every job at once (vLLM batches them together); the adapter name is the request's model."""
    from prolora.base_models import EMBEDDED_HUB_ID

    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(complete, port, name or EMBEDDED_HUB_ID, p, max_new, 600) for name, p in jobs]
        return [f.result() for f in futures]


def compare(tok, jobs, expected, got, seconds: float) -> dict:
    rows = [
        {
            "adapter": name,
            "prompt": tok.decode(p),
            "equal": want == have,
            "transformers": tok.decode(want),
            "vllm": tok.decode(have),
        }
        for (name, p), want, have in zip(jobs, expected, got, strict=False)
    ]
    base = [r for r in rows if r["adapter"] is None]
    return {
        "requests": len(rows),
        "equal": sum(r["equal"] for r in rows),
        "base_requests": len(base),
        "base_equal": sum(r["equal"] for r in base),
        "seconds": seconds,
        "outputs": rows,
    }


def start_server(
    base_dir: str,
    served: str,
    folder: Path,
    cache: Path,
    port: int,
    log_path: Path,
    threads: int,
    max_loras: int,
    max_cpu_loras: int,
    hooks: bool = True,
) -> subprocess.Popen:
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "PROLORA_VLLM_ADAPTERS_DIR": str(folder),
        "PROLORA_VLLM_CACHE_DIR": str(cache),
        "PROLORA_VLLM_HOOKS": "1" if hooks else "0",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "OMP_NUM_THREADS": str(threads),
    }
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        base_dir,
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-lora",
        "--max-lora-rank",
        "8",
        "--max-loras",
        str(max_loras),
        "--max-cpu-loras",
        str(max_cpu_loras),
        "--max-model-len",
        "2048",
        "--served-model-name",
        served,
        "--trust-request-chat-template",  # the chat check sends prolora's Tulu template with the request
    ]
    log(f"starting vLLM ({'with' if hooks else 'without'} prolora's hooks): {' '.join(cmd)}")
    return subprocess.Popen(
        cmd, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_server(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)


def wait_ready(server: subprocess.Popen, port: int, deadline_s: float) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < deadline_s:
        if server.poll() is not None:
            raise RuntimeError(f"vLLM exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return time.perf_counter() - started
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"vLLM was not ready within {deadline_s:.0f} s")


def compare_eval(transformers_dir: str, vllm_dir: str) -> int:
    """Compare two ``prolora eval`` outputs: scores per run and benchmark, and greedy GSM8K responses."""
    runs = {}
    for engine, out in (("transformers", transformers_dir), ("vllm", vllm_dir)):
        results = json.loads((Path(out) / "results.json").read_text())
        runs[engine] = {r["label"]: r for r in results["runs"]}
        runs[engine]["_total_s"] = results["timings"]["total_s"]
    same = True
    for label, run in runs["transformers"].items():
        if label.startswith("_"):
            continue
        for bench, score in run["scores"].items():
            other = runs["vllm"][label]["scores"][bench]
            headline = {k: v for k, v in score.items() if isinstance(v, (int, float))}
            other_headline = {k: v for k, v in other.items() if isinstance(v, (int, float))}
            equal = headline == other_headline
            same &= equal
            print(
                f"{label:8s} {bench:10s} transformers {headline}  vllm {other_headline}  "
                f"{'same' if equal else 'DIFFERENT'}; seconds {run['timings'][bench]['seconds']:.1f} vs "
                f"{runs['vllm'][label]['timings'][bench]['seconds']:.1f}"
            )
        responses = []
        for out in (transformers_dir, vllm_dir):
            rows = (Path(out) / "predictions" / label / "gsm8k.jsonl").read_text().splitlines()
            responses.append([json.loads(row)["response"] for row in rows])
        print(f"{label:8s} gsm8k responses identical: {responses[0] == responses[1]}")
    print(
        f"total seconds: transformers {runs['transformers']['_total_s']:.1f}, vllm {runs['vllm']['_total_s']:.1f}"
    )
    print("EVAL", "PASS: same scores" if same else "DIFFERENT scores")
    return 0 if same else 1


TRAFFIC = [f"t{i}" for i in range(8)]


def traffic(port: int, server: subprocess.Popen, prompt: list[int], names: list[str]) -> dict:
    """Request each adapter in ``names`` once (vLLM loads it into its host-side LoRA cache and a slot), the
    server process tree's memory (:func:`tree_memory`) before and after each."""
    before = tree_memory(server.pid)
    rows = []
    for name in names:
        complete(port, name, prompt, 1, 600)
        rows.append({"adapter": name, **tree_memory(server.pid)})
    return {
        "before": before,
        "after_each": rows,
        "anon_growth_per_adapter_bytes": (rows[-1]["anon"] - before["anon"]) / len(names),
        "rss_growth_per_adapter_bytes": (rows[-1]["rss"] - before["rss"]) / len(names),
    }


def mixed_checks(port, tok, jobs, expected, max_new: int, phases: dict, label: str) -> None:
    t0 = time.perf_counter()
    phases[label] = compare(tok, jobs, expected, run_batch(port, jobs, max_new), 0)
    phases[label]["seconds"] = time.perf_counter() - t0


def load_route(port, tok, work: Path, folder: Path, jobs, expected, max_new, phases: dict) -> dict:
    """``POST /v1/load_lora_adapter`` with a PRoLoRA folder (then requested by its new name), a broken PRoLoRA
    folder, a VeRA folder and a missing path; returns ``{case: [status, expected status, body]}``."""
    broken, vera = work / "broken", work / "vera"
    for bad in (broken, vera):
        bad.mkdir(exist_ok=True)
    (broken / "adapter_config.json").write_text((folder / "pro-a" / "adapter_config.json").read_text())
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    (vera / "adapter_config.json").write_text(json.dumps({"peft_type": "VERA", "r": 8}))
    (vera / "adapter_model.safetensors").write_bytes(b"")
    cases = {
        "PRoLoRA folder": ({"lora_name": "loaded-b", "lora_path": str(folder / "pro-b")}, 200),
        "broken PRoLoRA folder": ({"lora_name": "broken", "lora_path": str(broken)}, 400),
        "VeRA folder": ({"lora_name": "vera", "lora_path": str(vera)}, 400),
        "missing path": ({"lora_name": "missing", "lora_path": str(work / "no-such-adapter")}, 404),
    }
    statuses = {}
    for case, (body, want) in cases.items():
        code, text = post_status(port, "/v1/load_lora_adapter", body, 600)
        statuses[case] = [code, want, text[:300]]
        log(f"load_lora_adapter, {case}: {code} (expected {want}): {text[:160]}")
    picked = [(j, e) for j, e in zip(jobs, expected, strict=True) if j[0] == "pro-b"]
    loaded_jobs = [("loaded-b", p) for (_, p), _ in picked]
    phases["pro-b loaded through /v1/load_lora_adapter"] = compare(
        tok, loaded_jobs, [e for _, e in picked], run_batch(port, loaded_jobs, max_new), 0
    )
    return statuses


def chat_check(port: int, messages: list[dict], chat_ids: list[int], want: list[int], max_new: int) -> dict:
    """A chat request for pro-a with prolora's Tulu template: vLLM's prompt tokens against prolora's
    rendering, its greedy reply against transformers'."""
    from prolora.data.chat import TULU_CHAT_TEMPLATE

    body = {
        "model": "pro-a",
        "messages": messages,
        "max_tokens": max_new,
        "temperature": 0.0,
        "chat_template": TULU_CHAT_TEMPLATE,
        "add_special_tokens": True,  # as prolora tokenizes the Tulu format
        "return_token_ids": True,
    }
    out = post(port, "/v1/chat/completions", body, 600)
    got = out["choices"][0]["token_ids"]
    return {
        "prompt_tokens_equal": out["prompt_token_ids"] == chat_ids,
        "reply_equal": got == want,
        "request": {k: v for k, v in body.items() if k != "chat_template"}
        | {"chat_template": "TULU_CHAT_TEMPLATE"},
    }


def throughput(port: int, batch: list[list[int]], tokens: int, names: list[str] | None) -> dict:
    """vLLM tokens/s: every prompt at once, a fixed number of new tokens (EOS ignored); ``names``: the
    adapters the rows alternate between (None: the base model)."""
    from prolora.base_models import EMBEDDED_HUB_ID

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(len(batch)) as pool:
        outs = list(
            pool.map(
                lambda a: complete(
                    port,
                    names[a[0] % len(names)] if names else EMBEDDED_HUB_ID,
                    a[1],
                    tokens,
                    600,
                    ignore_eos=True,
                ),
                enumerate(batch),
            )
        )
    seconds = time.perf_counter() - t0
    generated = sum(len(o) for o in outs)
    return {
        "sequences": len(batch),
        "new_tokens": generated,
        "seconds": seconds,
        "tokens_per_s": generated / seconds,
    }


def main() -> int:
    if sys.argv[1:2] == ["compare-eval"]:
        return compare_eval(sys.argv[2], sys.argv[3])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/prolora-vllm-interop")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--throughput-tokens", type=int, default=64)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the transformers engine "
        "(vLLM's CPU build computes on all cores but one: one core on a 2-core machine)",
    )
    parser.add_argument("--max-loras", type=int, default=2, help="vLLM's adapter slots (--max-loras)")
    parser.add_argument("--max-cpu-loras", type=int, default=12, help="vLLM's host-side LoRA cache")
    parser.add_argument("--std", type=float, default=0.03, help="std of the random compact tensors")
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument(
        "--unhooked",
        action="store_true",
        help="also run traffic on vLLM without prolora's hooks (today's path)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()

    from prolora.base_models import EMBEDDED_HUB_ID, load_tokenizer
    from prolora.data.chat import render_tulu
    from prolora.inference.vllm_plugin import dense_base_model

    work = Path(args.workdir)
    folder, cache = work / "adapters", work / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(cache / "lora", ignore_errors=True)  # what this run exports, if anything
    summary: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    t0 = time.perf_counter()
    base_dir = str(dense_base_model(None, cache))
    make_adapters(folder, {"pro-a": 1, "pro-b": 2}, args.std)
    # traffic: prolora's default sharing (m = n = 7, the issue-24 adapters), 2.45 MB each
    make_adapters(folder, {t: 100 + i for i, t in enumerate(TRAFFIC)}, args.std, sharing=7)
    summary["prepare_s"] = time.perf_counter() - t0
    log(f"base model folder {base_dir}; adapters in {folder} ({summary['prepare_s']:.1f} s)")

    tok = load_tokenizer()
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    names = ["pro-a", "pro-b", None]
    jobs = [(names[i % 3], ids[i]) for i in range(len(ids))] + [
        (names[(i + 1) % 3], ids[i]) for i in range(len(ids))
    ]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat_ids = tok(render_tulu(messages, tok.eos_token, True)[0], add_special_tokens=True)["input_ids"]
    t0 = time.perf_counter()
    expected = reference(base_dir, folder, [*jobs, ("pro-a", chat_ids)], args.max_new_tokens)
    chat_expected, expected = expected[-1], expected[:-1]
    summary["reference_s"] = time.perf_counter() - t0
    log(f"transformers reference: {len(jobs) + 1} continuations in {summary['reference_s']:.1f} s")
    summary["adapters_change_outputs"] = (
        len({tuple(expected[i]) for i in range(len(jobs)) if jobs[i][1] == ids[0]}) > 1
    )
    compact_bytes = (folder / TRAFFIC[0] / "adapter_model.safetensors").stat().st_size
    summary["adapter_file_bytes"] = {"prolora": compact_bytes}  # a traffic adapter's
    batch = [ids[i % len(ids)] for i in range(8)]

    phases: dict = {}
    server = start_server(
        base_dir,
        EMBEDDED_HUB_ID,
        folder,
        cache,
        args.port,
        work / "vllm.log",
        args.threads,
        args.max_loras,
        args.max_cpu_loras,
    )
    try:
        summary["server_ready_s"] = wait_ready(server, args.port, args.ready_timeout)
        log(f"vLLM ready in {summary['server_ready_s']:.1f} s")
        mixed_checks(
            args.port,
            tok,
            jobs,
            expected,
            args.max_new_tokens,
            phases,
            "mixed batch, fresh server (adapters resolved on first use)",
        )
        summary["traffic"] = traffic(args.port, server, ids[0], TRAFFIC)
        log(
            f"traffic through {len(TRAFFIC)} more adapters: {summary['traffic']['anon_growth_per_adapter_bytes']:.0f} "
            f"bytes of anonymous RSS per adapter (compact file {compact_bytes} bytes)"
        )
        mixed_checks(
            args.port,
            tok,
            jobs,
            expected,
            args.max_new_tokens,
            phases,
            "mixed batch after traffic filled every slot",
        )
        base_jobs = [j for j in jobs if j[0] is None]
        phases["base model alone"] = compare(
            tok,
            base_jobs,
            [e for j, e in zip(jobs, expected, strict=True) if j[0] is None],
            run_batch(args.port, base_jobs, args.max_new_tokens),
            0,
        )
        adapter_jobs = [j for j in jobs if j[0] is not None]
        phases["adapters only (no base rows)"] = compare(
            tok,
            adapter_jobs,
            [e for j, e in zip(jobs, expected, strict=True) if j[0] is not None],
            run_batch(args.port, adapter_jobs, args.max_new_tokens),
            0,
        )
        summary["load_route"] = load_route(
            args.port, tok, work, folder, jobs, expected, args.max_new_tokens, phases
        )
        summary["chat"] = chat_check(args.port, messages, chat_ids, chat_expected, args.max_new_tokens)
        log(f"chat with prolora's Tulu template: {summary['chat']}")
        exported = sorted((cache / "lora").iterdir()) if (cache / "lora").is_dir() else []
        summary["exported_to_disk"] = [p.name for p in exported]
        if not args.skip_throughput:
            complete(args.port, EMBEDDED_HUB_ID, batch[0], 2, 600)  # warm-up
            summary["throughput_vllm"] = throughput(args.port, batch, args.throughput_tokens, None)
            summary["throughput_vllm_mixed_adapters"] = throughput(
                args.port, batch, args.throughput_tokens, ["pro-a", "pro-b"]
            )
            log(
                f"vLLM throughput: {summary['throughput_vllm']}; mixed: {summary['throughput_vllm_mixed_adapters']}"
            )
    finally:
        stop_server(server)
    summary["phases"] = phases
    for phase, r in phases.items():
        log(
            f"{phase}: {r['equal']}/{r['requests']} equal token for token "
            f"(base rows {r['base_equal']}/{r['base_requests']}; {r['seconds']:.1f} s)"
        )
    (work / "summary.json").write_text(json.dumps(summary, indent=2))

    if args.unhooked:  # vLLM as it is: dense exports, the CPU ops' base-row bug
        unhooked: dict = {}
        server = start_server(
            base_dir,
            EMBEDDED_HUB_ID,
            folder,
            cache,
            args.port,
            work / "vllm-unhooked.log",
            args.threads,
            args.max_loras,
            args.max_cpu_loras,
            hooks=False,
        )
        try:
            wait_ready(server, args.port, args.ready_timeout)
            mixed_checks(
                args.port, tok, jobs, expected, args.max_new_tokens, unhooked, "mixed batch, fresh server"
            )
            summary["traffic_unhooked"] = traffic(args.port, server, ids[0], TRAFFIC)
            mixed_checks(
                args.port,
                tok,
                jobs,
                expected,
                args.max_new_tokens,
                unhooked,
                "mixed batch after traffic filled every slot",
            )
        finally:
            stop_server(server)
        summary["phases_unhooked"] = unhooked
        dense = sorted((cache / "lora").iterdir()) if (cache / "lora").is_dir() else []
        # one size: a dense export is (r, h) and (o, r) per module whatever m and n
        summary["adapter_file_bytes"]["dense_export"] = (
            (dense[0] / "adapter_model.safetensors").stat().st_size
        )
        for phase, r in unhooked.items():
            log(
                f"without hooks, {phase}: {r['equal']}/{r['requests']} equal (base rows {r['base_equal']}/"
                f"{r['base_requests']})"
            )
        log(
            f"without hooks: {summary['traffic_unhooked']['anon_growth_per_adapter_bytes']:.0f} bytes of anonymous RSS per adapter"
        )
        (work / "summary.json").write_text(json.dumps(summary, indent=2))

    if not args.skip_throughput:
        summary["throughput_transformers"] = transformers_throughput(
            batch, args.throughput_tokens, args.threads
        )
        summary["throughput_transformers_mixed_adapters"] = transformers_throughput(
            batch, args.throughput_tokens, args.threads, folder
        )
        log(
            f"transformers throughput: {summary['throughput_transformers']}; mixed: "
            f"{summary['throughput_transformers_mixed_adapters']}"
        )
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    statuses_ok = all(code == want for code, want, _ in summary["load_route"].values())
    chat_ok = summary["chat"]["prompt_tokens_equal"] and summary["chat"]["reply_equal"]
    outputs_ok = bool(phases) and all(r["equal"] == r["requests"] for r in phases.values())
    ok = outputs_ok and statuses_ok and chat_ok and not summary["exported_to_disk"]
    log(
        f"{'PASS' if ok else 'FAIL'}: outputs {outputs_ok}, load route statuses {statuses_ok}, chat {chat_ok}, "
        f"nothing exported to disk {not summary['exported_to_disk']}; summary in {work / 'summary.json'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
