"""``prolora serve``: an OpenAI-compatible server for a base model and many adapters (docs/serve.md).

Flags follow vLLM's where they overlap (``--model``, ``--host``, ``--port``, ``--api-key``,
``--max-loras``-like ``--max-resident``). Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import fractions
import math
import re
import socket
import sys

from prolora.threads import add_threads_argument, set_threads

API_KEY_ENV = "PROLORA_API_KEY"  # as vLLM's VLLM_API_KEY: the key without a command-line flag


def add_arguments(parser) -> None:
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a run directory of `prolora train` or an adapter directory (PRoLoRA or PEFT LoRA); "
        "repeat for several; clients pick it by `model`=NAME",
    )
    parser.add_argument(
        "--adapters-dir",
        metavar="DIR",
        help="a folder of adapter folders, loaded on first use under their folder names",
    )
    parser.add_argument(
        "--max-resident",
        type=int,
        metavar="N",
        help="most adapters resident at once; the least "
        "recently used idle one is evicted (default: no limit)",
    )
    parser.add_argument(
        "--model", help="base model (default: the first run's model, else the embedded SmolLM2-135M)"
    )
    parser.add_argument(
        "--served-model-name", help="the base model's name in the API (default: --model or smollm2-135m)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=8000)
    key = parser.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1 routes (visible in `ps` to every local user: "
        f"prefer --api-key-file or ${API_KEY_ENV}); default: ${API_KEY_ENV} when set",
    )
    key.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="read the API key from the first line of this file (keep it readable by you only)",
    )
    parser.add_argument(
        "--chat-format",
        choices=("tulu", "template"),
        help="chat format for the base model and "
        "adapters whose run recorded none (default: the tokenizer's template if any, else tulu)",
    )
    # = inference.engine.MAX_NUM_SEQS and KV_CACHE_MEMORY_BYTES (not imported: --help stays free of torch)
    parser.add_argument(
        "--max-num-seqs",
        "--max-batch",
        dest="max_num_seqs",
        type=int,
        default=256,
        metavar="N",
        help="most requests in flight together, prefilling or decoding (vLLM's flag; default 256)",
    )
    parser.add_argument(
        "--kv-cache-memory-bytes",
        type=byte_size,
        default=4 * 2**30,
        metavar="SIZE",
        help="bound of the batch's KV cache: a request joins the batch only while requests × their "
        "longest prompt + max_tokens fit it (vLLM's flag: bytes, or 4G = 4 GiB, 4g = 4·10⁹; default 4G)",
    )
    # = inference.engine.MAX_NUM_BATCHED_TOKENS (not imported here: --help stays free of torch)
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=256,
        metavar="N",
        help="token budget of one batched prefill forward (rows × longest chunk); longer prompts prefill "
        "in chunks between decode steps (vLLM's flag; default 256)",
    )
    add_threads_argument(parser)
    # = inference.adapter_bank.EXPANDED_CACHE_BYTES / 2**20 (not imported here: --help stays free of torch)
    parser.add_argument(
        "--expanded-cache-mb",
        type=float,
        default=256.0,
        help="byte cap (MiB) of the expanded factors of hot adapters: a batch of at most 4 distinct "
        "adapters runs them expanded (near base-model speed); adapters not in use stay compact "
        "(default 256; 0: compact tensors only)",
    )
    # = inference.server.MAX_REQUEST_BYTES (not imported here: --help stays free of FastAPI and torch)
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=4 * 2**20,
        metavar="N",
        help="a larger request body is answered 413 (default 4 MiB)",
    )


def byte_size(text: str) -> int:
    """``--kv-cache-memory-bytes``: an integer of bytes, or a number with a suffix as vLLM reads it
    (k m g t: powers of 1000; K M G T: powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)([kmgtKMGT]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: write bytes (4294967296) or 4G, 512M")
    number, suffix = match.groups()
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}.get(suffix) or 2 ** (
        10 * ("KMGT".index(suffix) + 1)
    )
    size = int(fractions.Fraction(number) * scale)  # exact, whatever the number of digits
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is less than one byte: write at least 1 (e.g. 4G)")
    return size


def api_key(args) -> tuple[str | None, str]:
    """The server's API key and where it came from: ``--api-key``, else ``--api-key-file``, else
    ``$PROLORA_API_KEY``; ``(None, ...)`` when none is set (the routes are open).

    Raises:
        ValueError: an empty key (an empty file or variable: an empty key would open the routes).
        OSError: an unreadable ``--api-key-file``.
    """
    import os

    if args.api_key is not None:
        key, source = args.api_key, "--api-key"
    elif args.api_key_file is not None:
        with open(args.api_key_file, encoding="utf-8-sig") as f:
            key, source = f.readline().strip(), f"--api-key-file {args.api_key_file}"
        if os.name == "posix" and os.stat(args.api_key_file).st_mode & 0o077:
            print(
                f"prolora serve: warning: {args.api_key_file} is readable by other users; "
                f"chmod 600 {args.api_key_file}",
                file=sys.stderr,
            )
    elif os.environ.get(API_KEY_ENV) is not None:
        key, source = os.environ[API_KEY_ENV].strip(), f"${API_KEY_ENV}"
    else:
        return None, f"none: /v1 routes are open (set ${API_KEY_ENV}, --api-key-file or --api-key)"
    if not key:
        raise ValueError(f"the API key from {source} is empty; put the key there, or leave it unset")
    return key, source


def _check_bind(host: str, port: int) -> None:
    """Raise OSError naming ``--host``/``--port`` when uvicorn could not bind them (taken, unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(address)
    except OSError as exc:
        raise OSError(
            f"cannot listen on --host {host} --port {port}: {exc.strerror or exc}; pick another port "
            "(or stop what uses it) or a local address"
        ) from None


def run(args) -> int:
    from prolora.base_models import DEFAULT_MODEL
    from prolora.inference.server import build_engine, create_app, graceful_server

    if args.max_num_seqs < 1:
        raise ValueError(f"--max-num-seqs {args.max_num_seqs} must be at least 1")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} must be in [0, 65535] (0: any free port)")
    if not math.isfinite(args.expanded_cache_mb) or args.expanded_cache_mb < 0:
        raise ValueError(
            f"--expanded-cache-mb {args.expanded_cache_mb} must be a finite number of MiB ≥ 0 "
            "(0: compact tensors only)"
        )
    if args.max_num_batched_tokens < 1:
        raise ValueError(f"--max-num-batched-tokens {args.max_num_batched_tokens} must be at least 1")
    if args.max_request_bytes < 1:
        raise ValueError(f"--max-request-bytes {args.max_request_bytes} must be at least 1")
    if args.max_resident is not None and args.max_resident < 1:
        raise ValueError(f"--max-resident {args.max_resident} must be at least 1 (leave it out for no limit)")
    key, key_source = api_key(args)  # before the model loads, as the port
    print(f"API key: {'from ' + key_source if key else key_source}", flush=True)
    _check_bind(args.host, args.port)  # before the model loads: a taken port fails in a second, not a minute
    threads, why = set_threads(args.threads)  # the engine thread, started later, inherits it
    print(f"torch threads: {threads} ({why})", flush=True)
    engine = build_engine(
        args.model,
        args.adapter,
        args.adapters_dir,
        args.max_resident,
        args.max_num_seqs,
        int(args.expanded_cache_mb * 2**20),
        args.max_num_batched_tokens,
        args.kv_cache_memory_bytes,
    )
    app = create_app(
        engine,
        args.served_model_name or args.model or DEFAULT_MODEL,
        key,
        args.chat_format,
        max_request_bytes=args.max_request_bytes,
    )
    # SIGTERM: running requests get 25 s, then open streams end with an error chunk and [DONE]
    graceful_server(app, engine, 25.0, host=args.host, port=args.port, log_level="info").run()
    return 0
