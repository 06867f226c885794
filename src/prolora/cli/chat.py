"""``prolora chat``: an interactive conversation with a base model and saved adapters.

Commands at the prompt: ``/use NAME`` switches adapter (``/use base``: the base model alone),
``/reset`` clears the conversation, ``/exit`` (or end of input) quits.
"""

from __future__ import annotations

import sys

from .generate import add_generator_arguments, open_generator


def add_arguments(parser) -> None:
    add_generator_arguments(parser)


def _lines():
    """User lines: prompted when interactive, else read from stdin; ends at end of input."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def run(args) -> int:
    generator = open_generator(
        args
    )  # bad --model/--adapter: ValueError/FileNotFoundError, shown by prolora.cli
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    print(
        f"adapters: {', '.join(generator.adapters) or 'none'}; answering with "
        f"{generator.active or 'the base model'}. /use NAME, /reset, /exit",
        file=sys.stderr,
    )
    try:
        for line in _lines():
            line = line.strip()
            if not line:
                continue
            if line == "/exit":
                break
            if line == "/reset":
                messages = list(start)
                continue
            if line.startswith("/use "):
                name = line.split(maxsplit=1)[1]
                try:
                    generator.use(None if name == "base" else name)
                except ValueError as exc:
                    print(exc, file=sys.stderr)
                continue
            messages.append({"role": "user", "content": line})
            reply = generator.reply(messages, args.max_new_tokens, args.temperature)
            messages.append({"role": "assistant", "content": reply.text})
            print(reply.text)
            print(f"[{reply.new_tokens} tokens, {reply.tokens_per_s:.1f} tokens/s]", file=sys.stderr)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    return 0
