"""``prolora generate``: answer one prompt with a base model and saved adapters; prints tokens/s.

The reply goes to stdout, the statistics to stderr. Greedy decoding unless ``--temperature`` > 0.
"""

from __future__ import annotations

import sys

from prolora.threads import add_threads_argument, set_threads


def add_generator_arguments(parser) -> None:
    """Flags shared with ``prolora chat``."""
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a run directory of `prolora train` or a PEFT adapter directory; repeat to load "
        "several (named by NAME, else by the folder name)",
    )
    parser.add_argument(
        "--use",
        metavar="NAME",
        help="the adapter to answer with (default: the first); 'base' for the base model alone",
    )
    parser.add_argument(
        "--model", help="base model (default: the run's model, else the embedded SmolLM2-135M)"
    )
    parser.add_argument(
        "--chat-format",
        choices=("tulu", "template"),
        help="prompt format (default: an adapter's run's, else tulu; the base model alone: the tokenizer's "
        "chat template if it has one, else tulu, as prolora serve)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=256, help="reply length limit in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--system", help="an optional system message")
    add_threads_argument(parser)


def add_arguments(parser) -> None:
    parser.add_argument("prompt", help="the user message")
    add_generator_arguments(parser)


def open_generator(args):
    """The :class:`~prolora.inference.generation.Generator` of the parsed flags, with ``--use`` applied."""
    import math

    from prolora.inference.generation import load_generator

    if args.max_new_tokens < 1:  # before the model loads (transformers said `max_new_tokens` after it)
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be at least 1")
    if not math.isfinite(args.temperature) or args.temperature < 0:  # was silently greedy
        raise ValueError(f"--temperature {args.temperature} must be a finite number ≥ 0 (0: greedy)")
    set_threads(args.threads)
    generator = load_generator(args.model, args.adapter, args.chat_format)
    if args.use:
        generator.use(None if args.use == "base" else args.use)
    return generator


def run(args) -> int:
    generator = open_generator(
        args
    )  # bad --model/--adapter: ValueError/FileNotFoundError, shown by prolora.cli
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    reply = generator.reply(messages, args.max_new_tokens, args.temperature)
    print(reply.text)
    print(
        f"[{generator.active or 'base model'}: {reply.new_tokens} tokens in {reply.seconds:.1f} s, "
        f"{reply.tokens_per_s:.1f} tokens/s]",
        file=sys.stderr,
    )
    return 0
