"""Many adapters on one base model, resident in compact form, computed per row in one batched operation.

:class:`AdapterBank` holds any number of adapters for one Hugging Face base model. A PRoLoRA adapter keeps
only its compact tensors A_0, A_u, B_0, B_u (paper Section 3.1, Eq. 4) — all of them in one flat tensor
per adapter, with a layout shared by the adapters of one configuration — so its resident bytes are exactly
its parameter bytes (paper Section 1 / Table 1: the memory of the resident adapters is the cost of serving
many). Dense PEFT LoRA adapters are accepted too: LoRA is PRoLoRA with ``u = r`` (A_u = A, B_u = B, no
shared chunks), so both run through the same code.

A batch whose rows use different adapters (``None``: the base model alone) runs in one forward pass: a
forward hook on every adapted linear layer adds ``ΔW_row · x_row`` for all rows at once. Once per batch
composition (a :class:`BatchPlan`) the rows' flat tensors are stacked, one (rows, P) copy per group of
adapters sharing a layout, and every module's factors are strided views of that stack. Each step is then
a fixed number of batched matmuls per layer whatever the number k of distinct adapters (bgmv-style
per-row weights, as Punica / S-LoRA, but on the chunks): the A side is ``x_i · A_0ᵀ`` for the m input
chunks, then the roll-and-sum of Eq. 3 and the n rolls of z for the B side as one small (m·R, n·R) matmul
(:func:`prolora.equations.roll_mix_matrix`, the scaling folded in), the B side one matmul of the n rolled
copies of z with B_0 (the identity of :func:`prolora.equations.chunked_adapter_forward`), plus
``x·A_uᵀ·B_uᵀ`` for the unshared ranks, all added in place on the layer's output. FLOPs equal LoRA's at
the same rank; the full A and B are never formed. Table 4 variants
the chunked identity does not cover (``share="rank"``, ``rotate_dim="hidden"``) are expanded with the
Eq. 4 gather indices (:func:`prolora.equations.flat_gather_indices`) while in use, as is every adapter
whose expanded factors sit in the optional byte-capped cache of hot adapters (``expanded_cache_bytes``).

The bank is not thread-safe by itself: one thread runs forwards (the engine's); adding and removing
adapters from another thread must hold :attr:`AdapterBank.lock`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from prolora import equations as eq
from prolora.format.compact import LORA_TYPE, PROLORA_TYPE, read_adapter
from prolora.tuner.layer import base_shape
from prolora.tuner.layout import ChunkSpec, expand, flatten

# default byte cap of the expanded factors of hot adapters: 27 SmolLM2-135M r=8 all-linear adapters
# (9.3 MiB each dense), a few for a 7B model; adapters not in use stay compact whatever the cap
EXPANDED_CACHE_BYTES = 256 * 2**20
# most distinct adapters of one batch that run expanded, each in its own two matmuls per module; a batch
# of more runs the compact batched path, whose cost does not grow with the number of adapters (bgmv)
HOT_ADAPTERS = 4


@dataclass(frozen=True)
class ModuleFactors:
    """One adapter on one module: the compact tensors as one flat tensor, in the order (A_0, A_u, B_0, B_u).

    For a dense LoRA module ``spec.u == spec.r`` and A_0, B_0 are empty (A_u = A (r, h), B_u = B (o, r)).
    """

    flat: torch.Tensor
    spec: ChunkSpec

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``(A_0, A_u, B_0, B_u)`` of :attr:`flat` (no copy)."""
        return self.spec.split(self.flat)

    def expand(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Full ``(A, B)``, shapes (r, h) and (o, r), by the Eq. 4 gather indices (one gather)."""
        return expand(self.flat, self.spec)


@dataclass(frozen=True)
class AdapterLayout:
    """Where each module's compact tensors sit in an adapter's flat tensor: module -> (spec, offset, numel).

    Adapters of one configuration share one layout object, so a resident adapter costs its tensor bytes
    plus a few hundred bytes of bookkeeping, however many modules it adapts.
    """

    modules: dict[str, tuple[ChunkSpec, int, int]]

    @property
    def numel(self) -> int:
        return sum(n for _, _, n in self.modules.values())


@dataclass(frozen=True)
class ResidentAdapter:
    """A loaded adapter: ``kind`` is ``"prolora"`` or ``"lora"``; all its compact tensors in one ``flat``."""

    name: str
    kind: str
    path: str
    flat: torch.Tensor
    layout: AdapterLayout

    @property
    def nbytes(self) -> int:
        """Resident bytes: exactly the adapter's parameter bytes (compact for PRoLoRA, dense for LoRA)."""
        return self.flat.numel() * self.flat.element_size()

    @property
    def modules(self) -> dict[str, tuple[ChunkSpec, int, int]]:
        return self.layout.modules

    def factors(self, module: str) -> ModuleFactors:
        """The module's :class:`ModuleFactors` (a view of :attr:`flat`, no copy)."""
        spec, offset, numel = self.layout.modules[module]
        return ModuleFactors(self.flat.narrow(0, offset, numel), spec)


# ------------------------------------------------------------------------------------------------ reading
def read_factors(
    path: str | os.PathLike, model: nn.Module, name: str | None = None
) -> tuple[str, dict[str, ModuleFactors]]:
    """Read a PRoLoRA or dense PEFT LoRA adapter directory (:func:`prolora.format.read_adapter`, the one
    reader; ``name``: checked against the one name rule) and check it against ``model``.

    Returns ``(kind, module name -> ModuleFactors)``; module names are ``model.named_modules()`` names.

    Raises:
        FileNotFoundError: a missing directory or file.
        ValueError: as the reader (a corrupt or inconsistent file, naming the field or tensor), an adapter type
            or LoRA feature the server does not take, or a module the base model lacks or has with another
            shape (naming the module and both shapes).
    """
    adapter = read_adapter(path, name=name, types=(PROLORA_TYPE, LORA_TYPE))
    if adapter.peft_type == LORA_TYPE:
        config = adapter.config
        unsupported = [
            name
            for name, bad in (
                ("use_dora", config.use_dora),
                ("bias", config.bias != "none"),
                ("modules_to_save", bool(config.modules_to_save)),
            )
            if bad
        ]
        if unsupported:
            raise ValueError(
                f"{adapter.path}: LoRA adapters with {', '.join(unsupported)} are not served; merge or "
                "re-train without them."
            )
    factors = {
        module: ModuleFactors(flatten(parts), spec) for module, (spec, parts) in adapter.modules.items()
    }
    modules = dict(model.named_modules())
    for name, f in factors.items():
        if name not in modules:
            raise ValueError(
                f"{adapter.path}: module {name} is not in the base model; the adapter was made for another "
                "base model (adapter_config.json: base_model_name_or_path)."
            )
        h, o = base_shape(modules[name])
        if (h, o) != (f.spec.h, f.spec.o):
            raise ValueError(
                f"{adapter.path}: module {name} has (in, out) = {(f.spec.h, f.spec.o)} in the adapter but "
                f"{(h, o)} in the base model; the adapter was made for another base model."
            )
    return adapter.kind, factors


# --------------------------------------------------------------------------------------- batched compute
@dataclass
class _Group:
    """Rows of one batch whose adapters share one layout, on one module, with their per-row factors.

    ``rows``: the batch rows (None: all rows, in order). Chunked groups hold ``a0t`` (N, c, R), ``b0t``
    (N, R, ceil(o/n)) and ``mix`` (m·R, n·R: Eq. 3's roll-and-sum, the B side's rolls and the scaling,
    :func:`prolora.equations.roll_mix_matrix`); ``aut`` (N, h, u), ``but`` (N, u, o) are the unshared
    ranks; dense groups (expanded A, B) hold only ``aut`` (N, h, r), ``but`` (N, r, o). N is 1 when the
    rows share one adapter (``torch.matmul`` broadcasts).
    """

    rows: torch.Tensor | None
    spec: ChunkSpec
    a0t: torch.Tensor | None
    b0t: torch.Tensor | None
    aut: torch.Tensor | None
    but: torch.Tensor | None
    mix: torch.Tensor | None
    whole = False  # (a class attribute, as _HotGroup.whole: never the in-place path)

    def add_delta(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out += ΔW_row · x_row`` in place for x (N, T, h), out (N, T, o) of x's dtype; returns out.

        Per call: one batched matmul with A_0 over the m input chunks, one small matmul with ``mix``, one
        batched matmul with B_0 over the n rolled copies, an in-place add, and for the unshared ranks a
        batched matmul with A_u and one with B_u fused with the add (``baddbmm_``; ``addcmul_`` for u = 1)."""
        s = self.spec
        rows, t = x.shape[0], x.shape[1]
        if self.a0t is not None:
            c, shared = self.a0t.shape[-2], self.a0t.shape[-1]
            pad = s.m * c - s.h
            xp = torch.nn.functional.pad(x, (0, pad)) if pad else x
            z = torch.matmul(xp.reshape(rows, t * s.m, c), self.a0t)  # x_i · A_0ᵀ
            zb = z.view(rows * t, s.m * shared).mm(self.mix)  # Roll(Σ_i Roll(·, i·s_A), −j·s_B) · scaling
            y = torch.matmul(zb.view(rows, t * s.n, shared), self.b0t).view(rows, t, -1)
            out.add_(y[..., : s.o] if y.shape[-1] != s.o else y)
        if self.aut is not None:
            zu = torch.matmul(x, self.aut)
            if zu.shape[-1] == 1:  # u = 1 (the paper's default): an outer product, elementwise
                out.addcmul_(zu, self.but, value=s.scaling)
            elif self.but.shape[0] == rows:
                out.baddbmm_(zu, self.but, alpha=s.scaling)
            else:  # one adapter for every row
                out.view(-1, out.shape[-1]).addmm_(zu.reshape(-1, zu.shape[-1]), self.but[0], alpha=s.scaling)
        return out


@dataclass
class BatchPlan:
    """The per-module groups of one batch composition (``rows``: adapter name or None per batch row)."""

    rows: tuple[str | None, ...]
    modules: dict[str, list[_Group]]
    buffers: list[torch.Tensor] = field(default_factory=list)  # the stacked rows it owns (reusable)
    recycled: bool = False  # its buffers went to a newer plan: using it is an error


@dataclass
class _Views:
    """One adapter's expanded factors. ``modules``: ``(None, None, Aᵀ, Bᵀ)`` of the modules outside the
    chunked identity (Table 4 variants; stacked per row with the compact groups). ``hot``: when the
    adapter is in the expanded cache, ``(Aᵀ (h, r), scaling·Bᵀ (r, o))`` of every module, contiguous."""

    modules: dict[str, tuple]
    hot: dict[str, tuple[torch.Tensor, torch.Tensor]] | None

    @property
    def dense(self) -> bool:
        return self.hot is not None

    @property
    def expanded_bytes(self) -> int:
        tensors = [t for f in self.modules.values() for t in f[2:]]
        return sum(_bytes(t) for t in tensors + [t for f in (self.hot or {}).values() for t in f])


@dataclass
class _HotGroup:
    """The rows of one hot adapter on one module (``rows`` None: every row): ``out += x·Aᵀ·(s·Bᵀ)`` as two
    2-D matmuls, the second fused with the add (``addmm_``, in place on the layer's fresh output)."""

    rows: torch.Tensor | None
    a: torch.Tensor
    b: torch.Tensor
    whole: bool = False  # every row, and the layer's dtype: the hook adds in place on its output

    def apply(self, x3: torch.Tensor, out3: torch.Tensor) -> torch.Tensor:
        h, o = self.a.shape[0], self.b.shape[1]
        out3 = out3 if out3.is_contiguous() else out3.contiguous()
        xs = x3 if self.rows is None else x3.index_select(0, self.rows)
        xa = xs.reshape(-1, h).to(self.a.dtype).mm(self.a)
        if self.rows is None and self.b.dtype == out3.dtype:
            out3.view(-1, o).addmm_(xa, self.b)
            return out3
        d = xa.mm(self.b).view(xs.shape[0], -1, o).to(out3.dtype)
        return out3.add_(d) if self.rows is None else out3.index_add_(0, self.rows, d)


def _stack_rows(tensors: list[torch.Tensor | None], row_ids: list[int] | None) -> torch.Tensor | None:
    """(1, …) for one distinct tensor (broadcast over the rows), else row i's tensor at i (N, …)."""
    if tensors[0] is None:
        return None
    if row_ids is None:
        return tensors[0].unsqueeze(0)
    return torch.stack([tensors[j] for j in row_ids])


def _row_parts(rows: torch.Tensor, spec: ChunkSpec) -> tuple:
    """``(A_0ᵀ, B_0ᵀ, A_uᵀ, B_uᵀ)`` per row (None where empty) as views of ``rows`` (N, numel): the
    module's compact tensors in the order (A_0, A_u, B_0, B_u), as :func:`~prolora.tuner.layout.flatten` lays them out."""
    a0, a_u, b0, b_u = (p.transpose(1, 2) for p in spec.split(rows))
    return (
        a0 if spec.shared else None,
        b0 if spec.shared else None,
        a_u if spec.u else None,
        b_u if spec.u else None,
    )


@functools.lru_cache(maxsize=256)
def _mix(
    shared: int, m: int, n: int, stride_a: int, stride_b: int, rotate: bool, scaling: float
) -> torch.Tensor:
    return eq.roll_mix_matrix(shared, m, n, stride_a, stride_b, rotate, scaling)


class AdapterBank:
    """Adapters of one base model, resident as compact tensors, applied per row by forward hooks.

    Args:
        model: the base model (a ``transformers`` causal LM or any ``nn.Module`` with linear layers).
        expanded_cache_bytes: byte cap of the cache of expanded (A, B) factors of hot adapters (0: off).
            A batch with at most ``HOT_ADAPTERS`` distinct adapters expands them (least recently used
            expansions are dropped to stay under the cap) and applies each with two matmuls per module;
            adapters not in use, and batches of more distinct adapters, use the compact tensors.
            A cached adapter computes with two batched matmuls per module instead of the chunked path.
        view_cache_size: adapters whose per-module views are kept ready for building plans (working
            memory: Python objects only, except expanded factors).

    Usage::

        bank = AdapterBank(model)
        bank.load("sql", "runs/sql/adapter")
        with bank.batch(["sql", None, "code"]):      # one adapter (or None) per batch row
            logits = model(input_ids).logits
    """

    def __init__(
        self, model: nn.Module, expanded_cache_bytes: int = EXPANDED_CACHE_BYTES, view_cache_size: int = 64
    ):
        self.model = model
        self.adapters: dict[str, ResidentAdapter] = {}
        self.lock = threading.RLock()
        self.expanded_cache_bytes = int(expanded_cache_bytes)
        self.view_cache_size = view_cache_size
        self._views: OrderedDict[str, _Views] = OrderedDict()
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._modules = dict(model.named_modules())
        self._layouts: dict[tuple, AdapterLayout] = {}
        self._plan: BatchPlan | None = None
        self._plans: OrderedDict[tuple, BatchPlan] = OrderedDict()

    # ------------------------------------------------------------------------------------- residency
    def load(self, name: str, path: str | os.PathLike) -> ResidentAdapter:
        """Read the adapter at ``path`` (PRoLoRA or dense LoRA) and make it resident as ``name``.

        Raises:
            ValueError: ``name`` is taken or breaks the name rule, or the adapter is corrupt or made for another
                base model.
            FileNotFoundError: ``path`` lacks the adapter files.
        """
        kind, factors = read_factors(path, self.model, name)
        return self.add(name, kind, factors, str(path))

    def add(self, name: str, kind: str, factors: dict[str, ModuleFactors], path: str = "") -> ResidentAdapter:
        """Make already-read factors resident as ``name`` (see :func:`read_factors`)."""
        device = next(self.model.parameters()).device
        entries, offset = [], 0
        for module, f in factors.items():
            entries.append((module, (f.spec, offset, f.flat.numel())))
            offset += f.flat.numel()
        flat = torch.cat([f.flat for f in factors.values()]).to(device)
        with self.lock:
            layout = self._layouts.setdefault(tuple(entries), AdapterLayout(dict(entries)))
            adapter = ResidentAdapter(name, kind, str(path), flat, layout)
            if name in self.adapters:
                raise ValueError(
                    f"an adapter named {name!r} is already loaded; unload it first or pick another name."
                )
            for module in factors:
                if module not in self._hooks:
                    self._hooks[module] = self._modules[module].register_forward_hook(self._hook(module))
            self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> None:
        """Drop adapter ``name`` (and its cached expansions and plans). KeyError if it is not loaded."""
        with self.lock:
            del self.adapters[name]
            self._views.pop(name, None)
            for key in [k for k, plan in self._plans.items() if name in plan.rows]:
                del self._plans[key]

    @property
    def resident_bytes(self) -> int:
        """Bytes of all resident adapter tensors (compact for PRoLoRA, dense for LoRA); excludes the cache."""
        return sum(a.nbytes for a in self.adapters.values())

    @property
    def expanded_bytes(self) -> int:
        """Bytes of expanded factors held (cached hot adapters: at most ``expanded_cache_bytes``; plus the
        Table 4 variants outside the chunked identity while they are in use)."""
        return sum(v.expanded_bytes for v in self._views.values())

    def close(self) -> None:
        """Remove the forward hooks: the model is the plain base model again."""
        for handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()

    # ----------------------------------------------------------------------------------------- batches
    def plan(self, rows: Sequence[str | None], recycle: BatchPlan | None = None) -> BatchPlan:
        """The :class:`BatchPlan` of a batch whose row i uses adapter ``rows[i]`` (None: the base model).

        Plans are cached per composition (the last four: a running batch changes composition only when a
        request joins or leaves). ``recycle``: a plan the caller no longer uses (the running batch's
        previous one); its buffers are reused, which avoids fresh allocations (page faults cost more than
        the copy). Raises KeyError naming an unknown adapter.
        """
        rows = tuple(rows)
        with self.lock:
            hit = self._plans.get(rows)
            if hit is not None:
                self._plans.move_to_end(rows)
                return hit
            unknown = sorted({r for r in rows if r is not None and r not in self.adapters})
            if unknown:
                raise KeyError(f"adapters {unknown} are not loaded; loaded: {sorted(self.adapters)}")
            free = []
            if recycle is not None:
                if self._plans.get(recycle.rows) is recycle:
                    del self._plans[recycle.rows]
                free = recycle.buffers
                recycle.modules, recycle.buffers, recycle.recycled = {}, [], True
            plan = BatchPlan(rows, {})
            plan.modules = self._build(rows, free, plan.buffers)
            self._plans[rows] = plan
            if len(self._plans) > 4:
                self._plans.popitem(last=False)
            return plan

    def _build(
        self, rows: tuple, free: list[torch.Tensor], owned: list[torch.Tensor]
    ) -> dict[str, list[_Group]]:
        """Group the rows by adapter layout (adapters of one configuration share one); per group stack the
        rows' flat tensors once, (N, P), and cut every module's factors out of it as strided views."""
        device = next(self.model.parameters()).device
        distinct = list(dict.fromkeys(r for r in rows if r is not None))
        hot = set()
        if 0 < self.expanded_cache_bytes and len(distinct) <= HOT_ADAPTERS:
            for n in distinct:  # a later expansion may drop an earlier one (cap): decide after all
                self._view(n, expand=True)
            hot = {n for n in distinct if self._views[n].dense}
        groups: dict[tuple, list[int]] = {}
        for i, name in enumerate(rows):
            if name is not None:
                groups.setdefault(
                    ("hot", name) if name in hot else (id(self.adapters[name].layout),), []
                ).append(i)
        out: dict[str, list] = {}
        for key, idx in groups.items():
            sel = None if len(idx) == len(rows) else torch.tensor(idx, device=device)
            if key[0] == "hot":
                for module, (a, b) in self._views[key[1]].hot.items():
                    weight = getattr(self._modules[module], "weight", None)
                    whole = sel is None and weight is not None and a.dtype == weight.dtype
                    out.setdefault(module, []).append(_HotGroup(sel, a, b, whole))
                continue
            names = list(dict.fromkeys(rows[i] for i in idx))
            views = [self._view(n) for n in names]
            row_ids = None if len(names) == 1 else [names.index(rows[i]) for i in idx]
            layout = self.adapters[names[0]].layout
            flats = [self.adapters[n].flat for n in names]
            if row_ids is None:
                stacked = flats[0].unsqueeze(0)
            else:
                size, dtype = len(row_ids) * flats[0].numel(), flats[0].dtype
                buf = next((b for b in free if b.numel() >= size and b.dtype == dtype), None)
                if buf is None:
                    buf = torch.empty(size, dtype=dtype, device=device)
                else:
                    free.remove(buf)
                owned.append(buf)
                stacked = torch.stack([flats[j] for j in row_ids], out=buf[:size].view(len(row_ids), -1))
            for module, (spec, offset, numel) in layout.modules.items():
                if module in views[0].modules:  # outside the chunked identity: stack the rows' (Aᵀ, Bᵀ)
                    per = [v.modules[module] for v in views]
                    a0t = b0t = mix = None
                    aut, but = (_stack_rows([p[k] for p in per], row_ids) for k in (2, 3))
                else:
                    a0t, b0t, aut, but = _row_parts(stacked.narrow(1, offset, numel), spec)
                    mix = None
                    if a0t is not None:
                        rotate = spec.rotate is not None
                        mix = _mix(
                            spec.shared, spec.m, spec.n, spec.stride_a, spec.stride_b, rotate, spec.scaling
                        )
                        mix = mix.to(device=device, dtype=a0t.dtype)
                out.setdefault(module, []).append(_Group(sel, spec, a0t, b0t, aut, but, mix))
        return out

    def _view(self, name: str, expand: bool = False) -> _Views:
        """The adapter's :class:`_Views` (LRU of ``view_cache_size``); with ``expand``, also its hot
        factors when they fit the byte cap (dropping the least recently used expansions)."""
        hit = self._views.get(name)
        if hit is not None:
            self._views.move_to_end(name)
            if hit.dense or not expand:
                return hit
        adapter = self.adapters[name]
        size = sum(s.r * (s.h + s.o) for s, _, _ in adapter.modules.values()) * adapter.flat.element_size()
        dense = expand and 0 < size <= self.expanded_cache_bytes
        if dense:
            cached = sum(v.expanded_bytes for v in self._views.values() if v.dense)
            while cached + size > self.expanded_cache_bytes:  # drop the least recently used expansions
                victim = next(n for n, v in self._views.items() if v.dense)
                cached -= self._views[victim].expanded_bytes
                self._views[victim] = _Views(self._views[victim].modules, None)
        modules, hot = {}, {} if dense else None
        for module, (spec, _, _) in adapter.modules.items():
            if not dense and spec.chunked:
                continue
            a, b = adapter.factors(module).expand()
            if not spec.chunked:
                modules[module] = (None, None, a.t(), b.t())
            if dense:
                hot[module] = (a.t().contiguous(), (b.t() * spec.scaling).contiguous())
        view = self._views[name] = _Views(modules, hot)
        while len(self._views) > self.view_cache_size:
            self._views.popitem(last=False)
        return view

    @contextlib.contextmanager
    def batch(self, rows: Sequence[str | None] | BatchPlan):
        """Within the block, forwards of the model apply adapter ``rows[i]`` to batch row i."""
        plan = rows if isinstance(rows, BatchPlan) else self.plan(rows)
        if plan.recycled:
            raise ValueError(
                "this BatchPlan was recycled into a newer one (plan(..., recycle=)); build it again."
            )
        previous, self._plan = self._plan, plan
        try:
            yield plan
        finally:
            self._plan = previous

    def _hook(self, module: str):
        def hook(_layer, args, output):
            plan = self._plan
            groups = plan.modules.get(module) if plan is not None else None
            if not groups:
                return None
            x = args[0]
            if len(groups) == 1 and groups[0].whole and output.is_contiguous():  # one hot adapter: in place
                g = groups[0]
                output.view(-1, g.b.shape[1]).addmm_(x.reshape(-1, g.a.shape[0]).mm(g.a), g.b)
                return None
            batch = len(plan.rows)
            if (
                x.shape[0] % batch
            ):  # (batch, …, h), or flattened batch-major to (batch·seq, h) as OPT's fc1/fc2
                raise ValueError(f"the batch has {x.shape[0]} rows but the adapter plan {batch}")
            x3 = x.reshape(batch, -1, x.shape[-1])
            out = output.reshape(batch, -1, output.shape[-1])
            for g in groups:
                if isinstance(g, _HotGroup):
                    out = g.apply(x3, out)
                    continue
                dtype = (g.a0t if g.a0t is not None else g.aut).dtype
                if g.rows is None and dtype == out.dtype == x3.dtype and out.is_contiguous():
                    out = g.add_delta(x3, out)  # in place on the layer's fresh output
                    continue
                xs = (x3 if g.rows is None else x3.index_select(0, g.rows)).to(dtype)
                d = g.add_delta(xs, xs.new_zeros(*xs.shape[:-1], out.shape[-1])).to(out.dtype)
                out = out + d if g.rows is None else out.index_add(0, g.rows, d)
            return out.view(output.shape)

        return hook


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
