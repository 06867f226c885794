"""The serving engine: continuous batching of requests for many adapters over one base model.

One background thread owns the model. Each engine step has a token budget (``max_num_batched_tokens``,
vLLM's name): first one batched prefill forward over chunks of the admitted requests' prompts (different
adapters and lengths in one forward; a prompt longer than the budget is prefilled in chunks over several
steps, vLLM's chunked prefill), then one decode step for every running row at once. The rows' adapters
are applied per row by the :class:`~.adapter_bank.AdapterBank` in both forwards. A request whose prompt
is fully prefilled samples its first token and its KV cache joins the running batch (left-padded to the
batch's length) before that step's decode (continuous batching, as vLLM and TGI do); it leaves when it
ends, is cancelled (client gone) or fails; its cache row is dropped and the adapter unpinned. A burst of
requests thus prefills in a few batched forwards instead of one forward each, and running streams get a
token every step while long prompts prefill.

Requests join while the batch stays within ``max_num_seqs`` and a KV-cache bound (vLLM's names), the
oldest prefilling request first in each prefill forward with the others of closest length (less padding).
Decode steps write each token into spare room of the cache buffers instead of copying the cache.

The prefill and decode forwards are separate because the batch's KV cache is dense and padded (no paged
attention): a decode row inside a prefill forward would compute and store T - 1 padding columns.

Per row: greedy decoding (``temperature=0``) or sampling (temperature, top_p, a seeded generator), stop at
EOS, a stop string or ``max_tokens``. Text goes out as deltas through the request's ``sink`` callable
(called on the engine thread), holding back characters that may begin a stop string or an incomplete
UTF-8 sequence.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .registry import AdapterRegistry

# torch.Generator.manual_seed takes a signed or unsigned 64-bit integer
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1
# temperatures below this are greedy (vLLM's _SAMPLING_EPS): dividing the logits by a smaller temperature
# overflows float32 and turns the probabilities into NaN
GREEDY_TEMPERATURE = 1e-5
# tokens one prefill forward computes (rows × the longest chunk, padding included). On a CPU batching pays
# most for short prompts (one forward over 16 prompts of 10-15 tokens: a third of 16 single forwards;
# over 16 of 46 tokens: two thirds), so a forward of about 16 short prompts gets most of the gain while
# the first rows of a burst get their first token after a few hundred tokens, not after the whole burst
MAX_NUM_BATCHED_TOKENS = 256
# most requests in flight (prefilling or decoding) and the bytes their KV cache may take: vLLM's
# max_num_seqs and kv_cache_memory_bytes (VLLM_CPU_KVCACHE_SPACE on CPU). Under overload a request waits
# only for memory, not for a fixed number of rows: more rows per decode step cost less per token
MAX_NUM_SEQS = 256
KV_CACHE_MEMORY_BYTES = 4 * 2**30
MAX_LOGPROBS = 20  # most top log-probabilities per token (OpenAI's top_logprobs limit)


class ShuttingDown(RuntimeError):
    """The engine no longer accepts requests (HTTP 503)."""


@dataclass
class SamplingParams:
    """OpenAI's sampling fields. ``temperature = 0`` is greedy; ``seed`` makes sampling reproducible."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # vLLM's extension: generate past EOS up to max_tokens (benchmarks)
    logprobs: int | None = None  # per generated token its log-probability and this many most likely ones
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (echo)

    def check(self) -> None:
        """Raises ValueError naming the field, its value and the allowed range."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer ≥ 1.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature={self.temperature!r} must be in [0, 2].")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r} must be in (0, 1].")
        if len(self.stop) > 4:
            raise ValueError(f"stop holds {len(self.stop)} strings; send at most 4.")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop={list(self.stop)!r} must be at most 4 non-empty strings.")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 <= value <= MAX_LOGPROBS):
                raise ValueError(f"{name}={value!r} must be an integer in [0, {MAX_LOGPROBS}].")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(
                f"seed={self.seed!r} must be an integer in [{SEED_MIN}, {SEED_MAX}] (a 64-bit seed)."
            )


@dataclass
class Logprob:
    """A token's log-probability under the model (raw logits, before temperature and top_p, as vLLM) and
    the ``top`` most likely tokens at its position as ``(token id, log-probability)``."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Event:
    """What a request's sink receives: new text, the token ids generated since the last event (and their
    :class:`Logprob` s when asked for); the last event has a ``finish_reason`` (``"stop"``, ``"length"``
    or ``"abort"``) and, for ``"abort"``, an ``error``."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    error: str | None = None
    logprobs: list[Logprob] | None = None


@dataclass
class Request:
    """One generation request; ``cancel()`` frees its batch row at the next step."""

    prompt_ids: list[int]
    adapter: str | None
    params: SamplingParams
    sink: Callable[[Event], None]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    output_ids: list[int] = field(default_factory=list)
    text: str = ""  # text sent so far
    finish_reason: str | None = None
    cancelled: bool = False
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    position: int = 0  # tokens of this row in the KV cache (the next token's position id)
    generator: torch.Generator | None = None
    prefilled: int = 0  # prompt tokens already in ``kv`` (chunked prefill)
    kv: list | None = None  # while prefilling in chunks: per layer (keys, values), (1, heads, prefilled, dim)
    logprobs: list[Logprob] = field(default_factory=list)  # of output_ids (when params.logprobs is set)
    prompt_logprobs: list[Logprob | None] = field(default_factory=list)  # None for the first prompt token
    sent: int = 0  # output tokens already reported in events

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Completion:
    """The result of :meth:`Engine.generate`."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


class Engine:
    """Continuous batching over one model with per-row adapters.

    Args:
        model: a causal LM whose cache is a ``transformers`` ``DynamicCache`` (Llama-style models).
        tokenizer: its tokenizer (decoding and EOS).
        registry: the adapters (:class:`~.registry.AdapterRegistry` over the bank hooked into ``model``).
        max_num_seqs: most requests in flight together (prefilling or decoding); further requests wait.
        max_num_batched_tokens: the token budget of one prefill forward (rows × the longest chunk,
            padding included); prompts longer than it prefill in chunks over several steps.
        kv_cache_memory_bytes: bound of the batch's KV cache. The cache is dense and left-padded, so a
            batch of N requests holds at most N × the longest prompt + max_tokens among them; a request
            joins only while that bound stays within these bytes, and one that alone exceeds it is refused.
    """

    def __init__(
        self,
        model,
        tokenizer,
        registry: AdapterRegistry,
        max_num_seqs: int = MAX_NUM_SEQS,
        max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
        kv_cache_memory_bytes: int = KV_CACHE_MEMORY_BYTES,
    ):
        for name, value in (
            ("max_num_seqs", max_num_seqs),
            ("max_num_batched_tokens", max_num_batched_tokens),
            ("kv_cache_memory_bytes", kv_cache_memory_bytes),
        ):
            if value < 1:
                raise ValueError(f"{name}={value} must be at least 1.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.registry = registry
        self.bank = registry.bank
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_cache_memory_bytes = kv_cache_memory_bytes
        self.kv_bytes_per_token = kv_bytes_per_token(model)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.eos_token_id = tokenizer.eos_token_id
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        # ids the tokenizer knows but the embedding lacks would fail the forward
        self.vocab_size = min(len(tokenizer), getattr(embeddings, "num_embeddings", None) or len(tokenizer))
        self.device = next(model.parameters()).device
        self._waiting: deque[Request] = deque()
        self._rows: list[Request] = []  # decoding
        self._prefilling: list[Request] = []  # admitted, prompt not yet fully in the cache (FCFS)
        self._prefill_plan = None  # the adapter plan of the last prefill forward (its buffers are reused)
        self._cache = None  # the batch's DynamicCache, rows in the order of self._rows
        self._mask: torch.Tensor | None = None  # (rows, cached length): 1 for real tokens, 0 for left padding
        self._next: list[int] = []  # the token each row feeds at the next step
        self._plan = None  # the adapter plan of the last decode step (its buffers are reused)
        self._cv = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.counters = {
            "requests": 0,
            "finished": 0,
            "aborted": 0,
            "prompt_tokens": 0,
            "generation_tokens": 0,
            "decode_steps": 0,
            "prefill_steps": 0,
        }

    # --------------------------------------------------------------------------------------- control
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="prolora-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting requests, let running ones finish for up to ``timeout`` s, abort the rest, stop."""
        self._accepting = False
        deadline = time.monotonic() + timeout
        with self._cv:
            while (
                (self._rows or self._prefilling or self._waiting)
                and time.monotonic() < deadline
                and self._thread is not None
            ):
                self._cv.wait(0.05)
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for req in list(self._waiting) + self._prefilling + self._rows:
            self._finish(req, "abort", "the server is shutting down")
        self._waiting.clear()
        self._prefilling.clear()
        self._drop(list(range(len(self._rows))))

    @property
    def accepting(self) -> bool:
        """False once :meth:`shutdown` began."""
        return self._accepting

    @property
    def queue_length(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests admitted to the batch: prefilling or decoding (at most ``max_num_seqs``)."""
        return len(self._rows) + len(self._prefilling)

    # -------------------------------------------------------------------------------------- requests
    def submit(
        self,
        prompt_ids: list[int],
        adapter: str | None,
        params: SamplingParams,
        sink: Callable[[Event], None],
    ) -> Request:
        """Queue a request; ``sink`` receives its :class:`Event` s on the engine thread.

        Raises:
            ValueError: bad sampling fields, an empty prompt, or prompt + max_tokens beyond the context.
            UnknownAdapter, AdapterBusy, ValueError/FileNotFoundError: from loading the adapter.
            ShuttingDown: the engine is stopping.
        """
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        params.check()
        if not prompt_ids:
            raise ValueError("the prompt is empty.")
        if any(not 0 <= t < self.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be in [0, {self.vocab_size}).")
        if len(prompt_ids) + params.max_tokens > self.max_context:
            raise ValueError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) is "
                f"{len(prompt_ids) + params.max_tokens} tokens, beyond the model's context of "
                f"{self.max_context}; shorten the prompt or lower max_tokens."
            )
        need = (len(prompt_ids) + params.max_tokens) * self.kv_bytes_per_token
        if need > self.kv_cache_memory_bytes:
            raise ValueError(
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) needs "
                f"{need / 2**20:.1f} MiB of KV cache, beyond the server's {self.kv_cache_memory_bytes / 2**20:.1f} "
                "MiB (--kv-cache-memory-bytes); shorten the prompt or lower max_tokens."
            )
        req = Request(list(prompt_ids), adapter, params, sink)
        if params.temperature >= GREEDY_TEMPERATURE:
            req.generator = torch.Generator(device=self.device)
            req.generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        if adapter is not None:  # last: nothing after the pin may fail, or the adapter stays pinned forever
            self.registry.acquire(adapter)
        with self._cv:
            self._waiting.append(req)
            self.counters["requests"] += 1
            self.counters["prompt_tokens"] += len(prompt_ids)
            self._cv.notify_all()
        return req

    def generate(
        self,
        prompt_ids: list[int],
        adapter: str | None = None,
        params: SamplingParams | None = None,
        timeout: float | None = None,
    ) -> Completion:
        """Submit and wait for the whole answer (the engine thread must be running)."""
        events: queue.Queue[Event] = queue.Queue()
        req = self.submit(prompt_ids, adapter, params or SamplingParams(), events.put)
        parts = []
        while True:
            event = events.get(timeout=timeout)
            parts.append(event.text)
            if event.finish_reason is not None:
                if event.error:
                    raise RuntimeError(event.error)
                return Completion("".join(parts), list(req.output_ids), event.finish_reason, len(prompt_ids))

    # ------------------------------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._rows and not self._prefilling:
                    self._cv.wait()
                if self._stop:
                    return
                self._admit()
            for req in [r for r in self._prefilling if r.cancelled]:
                self._prefilling.remove(req)
                self._finish(req, "abort", "cancelled")
            if self._prefilling:
                self._prefill_step()
            try:
                self._drop([i for i, r in enumerate(self._rows) if r.cancelled])
                if self._rows:
                    self._step()
            except Exception as exc:  # noqa: BLE001  (a failing forward fails its requests, never the server)
                for req in self._rows:
                    self._finish(req, "abort", f"generation failed: {type(exc).__name__}: {exc}")
                self._drop(list(range(len(self._rows))))
            with self._cv:
                self._cv.notify_all()

    def _admit(self) -> None:
        """Move waiting requests (first come, first served) into prefill while the batch stays within
        ``max_num_seqs`` and its KV bound: rows × the longest final length (prompt + max_tokens)."""
        admitted = self._rows + self._prefilling
        longest = max((len(r.prompt_ids) + r.params.max_tokens for r in admitted), default=0)
        while self._waiting and len(admitted) < self.max_num_seqs:
            req = self._waiting[0]
            grown = max(longest, len(req.prompt_ids) + req.params.max_tokens)
            if (
                admitted
                and (len(admitted) + 1) * grown * self.kv_bytes_per_token > self.kv_cache_memory_bytes
            ):
                return
            longest = grown
            admitted.append(req)
            self._prefilling.append(self._waiting.popleft())

    # --------------------------------------------------------------------------------------- prefill
    def _chunks(self) -> list[tuple[Request, int]]:
        """This step's prefill rows and chunk lengths within the token budget (the forward computes rows ×
        the longest chunk, padding included): the oldest request first, so every request progresses, then
        the others closest to its length first (length bucketing: less padding than first come, first
        served); a row whose rest does not fit gets a shorter chunk."""

        def rest(req: Request) -> int:
            return len(req.prompt_ids) - req.prefilled

        oldest, *others = self._prefilling
        others.sort(key=lambda req: abs(rest(req) - rest(oldest)))
        budget, width, chosen = self.max_num_batched_tokens, 0, []
        for req in [oldest, *others]:
            grown = max(width, min(rest(req), budget))
            if (len(chosen) + 1) * grown <= budget:
                width = grown
            elif (len(chosen) + 1) * width > budget:
                break
            chosen.append((req, min(rest(req), width)))
        return chosen

    def _prefill_step(self) -> None:
        """One batched prefill forward over this step's chunks; a failing batch is retried row by row, so
        a request whose prefill fails fails alone."""
        chunks = self._chunks()
        try:
            self._prefill(chunks)
        except Exception as exc:  # noqa: BLE001
            if len(chunks) == 1:
                req = chunks[0][0]
                self._prefilling.remove(req)
                self._finish(req, "abort", f"generation failed: {type(exc).__name__}: {exc}")
                return
            for chunk in chunks:
                if chunk[0].finish_reason is None and chunk[0] in self._prefilling:
                    try:
                        self._prefill([chunk])
                    except Exception as exc_one:  # noqa: BLE001
                        self._prefilling.remove(chunk[0])
                        self._finish(
                            chunk[0], "abort", f"generation failed: {type(exc_one).__name__}: {exc_one}"
                        )

    def _prefill(self, chunks: list[tuple[Request, int]]) -> None:
        """Run one forward over ``chunks`` (request, chunk length). Layout per row: its cached prompt
        prefix left-padded to the longest one (zeros, masked), then its chunk, then right padding up to the
        longest chunk (masked for later tokens; each padding query still sees real keys, so nothing is
        NaN). Rows whose prompt is complete sample their first token and join the decode batch."""
        from transformers import DynamicCache

        reqs = [r for r, _ in chunks]
        rows, width = len(chunks), max(c for _, c in chunks)
        past = max(r.prefilled for r in reqs)
        ids = torch.zeros(rows, width, dtype=torch.long)
        mask = torch.zeros(rows, past + width, dtype=torch.long)
        for i, (req, c) in enumerate(chunks):
            ids[i, :c] = torch.tensor(req.prompt_ids[req.prefilled : req.prefilled + c])
            mask[i, past - req.prefilled : past + c] = 1
        starts = torch.tensor([r.prefilled for r in reqs])
        positions = starts.view(rows, 1) + torch.arange(width).view(1, width)
        cache = DynamicCache()
        if past:  # rows that continue a chunked prompt: their cached prefix, left-padded with zeros
            some = next(r.kv for r in reqs if r.prefilled)
            cache = DynamicCache(
                [
                    tuple(
                        torch.cat(
                            [
                                _pad_left(
                                    r.kv[layer][t] if r.prefilled else some[layer][t][:, :, :0],
                                    past - r.prefilled,
                                )
                                for r in reqs
                            ]
                        )
                        for t in (0, 1)
                    )
                    for layer in range(len(some))
                ]
            )
        recycle = self._prefill_plan if self._prefill_plan is not self._plan else None
        plan = self._prefill_plan = self.bank.plan([r.adapter for r in reqs], recycle=recycle)
        with torch.inference_mode(), self.bank.batch(plan):
            hidden = self.model.get_decoder()(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
            # the output layer on each row's last real column only (not on every padded column)
            last = hidden[torch.arange(rows), torch.tensor([c - 1 for _, c in chunks])]
            logits = self.model.get_output_embeddings()(last.unsqueeze(1))[:, 0]
        self.counters["prefill_steps"] += 1
        for i, (req, c) in enumerate(chunks):  # echo with logprobs: every prompt position's distribution
            if req.params.prompt_logprobs is not None:
                self._prompt_logprobs(req, hidden[i : i + 1, :c])
        kvs = [(layer.keys, layer.values) for layer in cache.layers]
        done = []
        for i, (req, c) in enumerate(chunks):  # each row's real columns: past - prefilled .. past + c
            start = past - req.prefilled
            req.kv = [(k[i : i + 1, :, start : past + c], v[i : i + 1, :, start : past + c]) for k, v in kvs]
            req.prefilled += c
            if req.prefilled == len(req.prompt_ids):
                done.append(i)
        if not done:
            return
        logits = logits[torch.tensor(done, device=self.device)]
        finished = [reqs[i] for i in done]
        tokens = self._sample(logits, finished).tolist()
        joining = []
        for req, token in zip(finished, tokens, strict=True):
            self._prefilling.remove(req)
            req.position = len(req.prompt_ids)
            if not self._emit(req, token):
                joining.append((req, token))
        if joining:
            self._join([(r.kv, r.position) for r, _ in joining])
            for req, token in joining:
                self._rows.append(req)
                self._next.append(token)
        for req in finished:
            req.kv = None

    def _prompt_logprobs(self, req: Request, hidden: torch.Tensor) -> None:
        """Log-probabilities of the prompt tokens this chunk predicts (position p predicts token p + 1)."""
        if not req.prompt_logprobs:
            req.prompt_logprobs.append(None)  # the first token has no context
        with torch.inference_mode(), self.bank.batch([req.adapter]):
            logits = self.model.get_output_embeddings()(hidden)[0]
        start, ids = req.prefilled, req.prompt_ids
        for p in range(logits.shape[0]):
            if start + p + 1 < len(ids):
                req.prompt_logprobs.append(
                    _logprob(logits[p], ids[start + p + 1], req.params.prompt_logprobs)
                )

    def _step(self) -> None:
        rows = len(self._rows)
        mask = torch.cat([self._mask, self._mask.new_ones(rows, 1)], dim=1)
        ids = torch.tensor(self._next, device=self.device).view(rows, 1)
        positions = torch.tensor([r.position for r in self._rows], device=self.device).view(rows, 1)
        plan = self._plan = self.bank.plan([r.adapter for r in self._rows], recycle=self._plan)
        with torch.inference_mode(), self.bank.batch(plan):
            logits = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
            ).logits[:, -1]
        self._mask = mask
        self.counters["decode_steps"] += 1
        tokens = self._sample(logits, self._rows).tolist()
        done = []
        for i, (req, token) in enumerate(zip(self._rows, tokens, strict=False)):
            req.position += 1
            self._next[i] = token
            if self._emit(req, token):
                done.append(i)
        self._drop(done)

    # ----------------------------------------------------------------------------------- batch cache
    def _join(self, parts: list[tuple[list, int]]) -> None:
        """Append prefilled rows (per layer (keys, values) of one row, and its length) to the batch,
        left-padding every row to the longest."""
        lengths = [n for _, n in parts]
        old = 0 if self._cache is None else self._mask.shape[1]
        total = max(old, *lengths)
        masks = [torch.ones(1, n, dtype=torch.long, device=self.device) for n in lengths]
        mask = torch.cat(
            ([torch.nn.functional.pad(self._mask, (total - old, 0))] if self._cache is not None else [])
            + [torch.nn.functional.pad(m, (total - m.shape[1], 0)) for m in masks]
        )
        layers = []
        for j, rows in enumerate(zip(*[kv for kv, _ in parts], strict=True)):
            olds = self._cache.layers[j] if self._cache is not None else None
            layers.append(
                tuple(
                    torch.cat(
                        (
                            [_pad_left(olds.keys if t == 0 else olds.values, total - old)]
                            if olds is not None
                            else []
                        )
                        + [_pad_left(kv[t], total - n) for kv, n in zip(rows, lengths, strict=True)]
                    )
                    for t in (0, 1)
                )
            )
        if self._cache is None:
            from transformers import DynamicCache

            self._cache = DynamicCache(layers)
            for layer in self._cache.layers:  # decode steps write in place (see _growing_layer)
                layer.__class__ = _growing_layer(type(layer))
        else:
            for layer, (keys, values) in zip(self._cache.layers, layers, strict=True):
                layer.keys, layer.values = keys, values
        self._mask = mask

    def _drop(self, indices: list[int]) -> None:
        """Remove rows ``indices`` from the batch (finishing cancelled ones) and trim common left padding."""
        if not indices:
            return
        for i in indices:
            req = self._rows[i]
            if req.finish_reason is None:
                self._finish(req, "abort", "cancelled")
        keep = [i for i in range(len(self._rows)) if i not in set(indices)]
        self._rows = [self._rows[i] for i in keep]
        self._next = [self._next[i] for i in keep]
        if not keep:
            self._cache = self._mask = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(0).nonzero()[0])
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    # -------------------------------------------------------------------------------------- sampling
    def _sample(self, logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        """Next token per row: argmax for greedy rows (temperature below ``GREEDY_TEMPERATURE``, as vLLM);
        temperature + nucleus (top_p) sampling otherwise."""
        tokens = logits.argmax(-1)
        for i, req in enumerate(reqs):
            p = req.params
            if p.temperature < GREEDY_TEMPERATURE:
                continue
            probs = torch.softmax(logits[i].float() / p.temperature, dim=-1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                outside = (
                    sorted_probs.cumsum(0) - sorted_probs > p.top_p
                )  # keeps the token that crosses top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            tokens[i] = torch.multinomial(probs, 1, generator=req.generator)[0]
        for i, req in enumerate(reqs):
            if req.params.logprobs is not None:
                req.logprobs.append(_logprob(logits[i], int(tokens[i]), req.params.logprobs))
        return tokens

    def _emit(self, req: Request, token: int) -> bool:
        """Record a new token of ``req`` and send its text; True when the request is finished."""
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        self.counters["generation_tokens"] += 1
        req.output_ids.append(token)
        if req.cancelled:
            self._finish(req, "abort", "cancelled")
            return True
        ended = token == self.eos_token_id and not req.params.ignore_eos
        text = self.tokenizer.decode(
            req.output_ids[:-1] if ended else req.output_ids, skip_special_tokens=True
        )
        reason = "stop" if ended else None
        cut = [i for i in (text.find(s) for s in req.params.stop) if i >= 0]
        if cut:
            text, reason = text[: min(cut)], "stop"
        elif reason is None and len(req.output_ids) >= req.params.max_tokens:
            reason = "length"
        if reason is None:
            safe = len(text.rstrip("\ufffd"))  # an incomplete UTF-8 sequence decodes to U+FFFD
            held = max(
                # only prefixes no longer than the text can end it: a stop string of a million
                # characters costs no more than a short one
                (
                    k
                    for s in req.params.stop
                    for k in range(1, min(len(s), safe + 1))
                    if text[:safe].endswith(s[:k])
                ),
                default=0,
            )
            text = text[: safe - held]
        delta = text[len(req.text) :] if text.startswith(req.text) else ""
        req.text += delta
        if reason is not None:
            self._finish(req, reason, None, delta)
            return True
        if delta:
            _send(req, self._event(req, delta))
        return False

    def _event(self, req: Request, text: str, reason: str | None = None, error: str | None = None) -> Event:
        """An event with ``text`` and the tokens (and log-probabilities) not yet reported."""
        tokens = req.output_ids[req.sent :]
        logprobs = req.logprobs[req.sent :] if req.params.logprobs is not None else None
        req.sent = len(req.output_ids)
        return Event(text, tokens, reason, error, logprobs)

    def _finish(self, req: Request, reason: str, error: str | None, text: str = "") -> None:
        if req.finish_reason is not None:
            return
        req.finish_reason = reason
        self.counters["finished" if reason != "abort" else "aborted"] += 1
        if req.adapter is not None:
            self.registry.release(req.adapter)
        _send(req, self._event(req, text, reason, error))


def _send(req: Request, event: Event) -> None:
    try:
        req.sink(event)
    except Exception:  # noqa: BLE001  (a consumer that went away must not stop the engine)
        req.cancelled = True


def _logprob(logits: torch.Tensor, token: int, top: int) -> Logprob:
    """``token``'s log-probability under ``logits`` (one position) and the ``top`` most likely tokens."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    best = logprobs.topk(top) if top else None
    pairs = list(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best is not None else []
    return Logprob(token, float(logprobs[token]), pairs)


def kv_bytes_per_token(model) -> int:
    """Bytes one token takes in one row's KV cache: layers × 2 (keys, values) × KV heads × head size ×
    the element size, from the model's config (KV heads × head size default to the hidden size)."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    width = kv_heads * head_dim if kv_heads and head_dim else config.hidden_size
    return int(config.num_hidden_layers * 2 * width * next(model.parameters()).element_size())


# spare positions a decode cache buffer gets when it is (re)allocated
CACHE_SLACK = 64


@functools.cache
def _growing_layer(base: type) -> type:
    """A subclass of the cache layer class ``base`` (transformers' ``DynamicLayer``) whose keys and values
    are views of buffers with spare room at the end: a decode step writes its token in place instead of
    copying the whole cache (``torch.cat``) in every layer. A layer whose tensors were replaced (rows
    joined or left) gets a fresh buffer with ``CACHE_SLACK`` spare positions at its next update."""

    class GrowingLayer(base):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                return super().update(key_states, value_states, *args, **kwargs)
            views = getattr(self, "_views", None)
            if views is None or views[0] is not self.keys or views[1] is not self.values:
                buffers = []
                for old in (self.keys, self.values):
                    shape = list(old.shape)
                    shape[-2] += key_states.shape[-2] + CACHE_SLACK
                    buffer = old.new_empty(shape)
                    buffer[..., : old.shape[-2], :] = old
                    buffers.append(buffer)
                self._room = tuple(buffers)
            length, new = self.keys.shape[-2], key_states.shape[-2]
            if length + new > self._room[0].shape[-2]:  # out of room: copy once into a larger buffer
                self._views = None
                return self.update(key_states, value_states, *args, **kwargs)
            for buffer, states in zip(self._room, (key_states, value_states), strict=True):
                buffer[..., length : length + new, :] = states
            self.keys, self.values = (b[..., : length + new, :] for b in self._room)
            self._views = (self.keys, self.values)
            return self.keys, self.values

    GrowingLayer.__name__ = GrowingLayer.__qualname__ = f"Growing{base.__name__}"
    return GrowingLayer


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad a (rows, heads, length, dim) cache tensor by ``n`` positions on the left of its length."""
    return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t
