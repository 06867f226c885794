"""The serving engine: continuous batching of requests for many adapters over one base model.

One background thread owns the model. Each iteration it admits waiting requests (each prompt is
prefilled alone, then its KV cache joins the running batch, left-padded to the batch's length) and runs
one decode step for every running row at once; the rows' adapters are applied per row by the
:class:`~.adapter_bank.AdapterBank` in the same forward pass. A request thus joins the running batch
between two decode steps (continuous batching, as vLLM and TGI do) and leaves it when it ends, is
cancelled (client gone) or fails; its cache row is dropped and the adapter unpinned.

Per row: greedy decoding (``temperature=0``) or sampling (temperature, top_p, a seeded generator), stop at
EOS, a stop string or ``max_tokens``. Text goes out as deltas through the request's ``sink`` callable
(called on the engine thread), holding back characters that may begin a stop string or an incomplete
UTF-8 sequence.
"""

from __future__ import annotations

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
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise ValueError(
                f"seed={self.seed!r} must be an integer in [{SEED_MIN}, {SEED_MAX}] (a 64-bit seed)."
            )


@dataclass
class Event:
    """What a request's sink receives: new text (and token ids); the last event has a ``finish_reason``
    (``"stop"``, ``"length"`` or ``"abort"``) and, for ``"abort"``, an ``error``."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    error: str | None = None


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
        max_batch: most rows decoded together; further requests wait.
    """

    def __init__(self, model, tokenizer, registry: AdapterRegistry, max_batch: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.registry = registry
        self.bank = registry.bank
        self.max_batch = max_batch
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.eos_token_id = tokenizer.eos_token_id
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        # ids the tokenizer knows but the embedding lacks would fail the forward
        self.vocab_size = min(len(tokenizer), getattr(embeddings, "num_embeddings", None) or len(tokenizer))
        self.device = next(model.parameters()).device
        self._waiting: deque[Request] = deque()
        self._rows: list[Request] = []
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
            while (self._rows or self._waiting) and time.monotonic() < deadline and self._thread is not None:
                self._cv.wait(0.05)
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for req in list(self._waiting) + list(self._rows):
            self._finish(req, "abort", "the server is shutting down")
        self._waiting.clear()
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
        return len(self._rows)

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
                while not self._stop and not self._waiting and not self._rows:
                    self._cv.wait()
                if self._stop:
                    return
                new = [
                    self._waiting.popleft()
                    for _ in range(min(len(self._waiting), self.max_batch - len(self._rows)))
                ]
            for req in new:  # a request whose prefill fails fails alone, not the running batch
                try:
                    self._prefill(req)
                except Exception as exc:  # noqa: BLE001
                    self._finish(req, "abort", f"generation failed: {type(exc).__name__}: {exc}")
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

    def _prefill(self, req: Request) -> None:
        from transformers import DynamicCache

        if req.cancelled:
            self._finish(req, "abort", "cancelled")
            return
        ids = torch.tensor([req.prompt_ids], device=self.device)
        cache = DynamicCache()
        with torch.inference_mode(), self.bank.batch([req.adapter]):
            logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
        token = int(self._sample(logits, [req])[0])
        req.position = len(req.prompt_ids)
        if self._emit(req, token):
            return
        self._join(cache, len(req.prompt_ids))
        self._rows.append(req)
        self._next.append(token)

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
    def _join(self, cache, length: int) -> None:
        """Append a prefilled single-row cache to the batch, left-padding the shorter side."""
        ones = torch.ones(1, length, dtype=torch.long, device=self.device)
        if self._cache is None:
            self._cache, self._mask = cache, ones
            return
        total = max(self._mask.shape[1], length)
        pad_old, pad_new = total - self._mask.shape[1], total - length
        for old, new in zip(self._cache.layers, cache.layers, strict=False):
            old.keys = torch.cat([_pad_left(old.keys, pad_old), _pad_left(new.keys, pad_new)])
            old.values = torch.cat([_pad_left(old.values, pad_old), _pad_left(new.values, pad_new)])
        self._mask = torch.cat(
            [torch.nn.functional.pad(self._mask, (pad_old, 0)), torch.nn.functional.pad(ones, (pad_new, 0))]
        )

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
                (k for s in req.params.stop for k in range(1, len(s)) if text[:safe].endswith(s[:k])),
                default=0,
            )
            text = text[: safe - held]
        delta = text[len(req.text) :] if text.startswith(req.text) else ""
        req.text += delta
        if reason is not None:
            self._finish(req, reason, None, delta)
            return True
        if delta:
            _send(req, Event(delta, [token]))
        return False

    def _finish(self, req: Request, reason: str, error: str | None, text: str = "") -> None:
        if req.finish_reason is not None:
            return
        req.finish_reason = reason
        self.counters["finished" if reason != "abort" else "aborted"] += 1
        if req.adapter is not None:
            self.registry.release(req.adapter)
        _send(req, Event(text, [], reason, error))


def _send(req: Request, event: Event) -> None:
    try:
        req.sink(event)
    except Exception:  # noqa: BLE001  (a consumer that went away must not stop the engine)
        req.cancelled = True


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad a (rows, heads, length, dim) cache tensor by ``n`` positions on the left of its length."""
    return torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t
