"""Prototypes of core changes, measured against the library as it is (the core files are not edited here).

:func:`fast_adapter_output` is a proposed replacement for ``PRoLoRALayer._adapter_output`` with two changes:

* **Decode fast path.** Without autograd and with the expanded-factor cache on, it checks the cache first
  and returns after two ``F.linear`` calls, skipping what the current code does on every call before it
  reaches the cache (five ``ParameterDict`` look-ups, an ``nn.Identity`` dropout call, a same-dtype ``.to``).
* **Flat-gather expansion** (``lean=False``). While autograd records, A and B are each built by one
  ``index_select`` from the concatenated compact tensors (:func:`flat_index`) instead of the library's
  ``index_select`` + permute-copy + ``narrow`` + ``cat``: fewer autograd nodes per module and step.
* **Lean training path** (``lean=True``). :class:`LeanAdapter` builds A and B inside its forward
  with one flat gather each (:func:`flat_index`) and frees them at once, saving only x, the rank-r
  activation and the compact chunks; backward gathers them again and folds the dense gradients back into
  the chunks with one ``index_add`` each. The current code (a) saves the expanded A (r, h) and B (o, r)
  for backward, which LoRA never allocates (its A and B are the parameters), so PRoLoRA's step peak is
  r·(h + o) floats above LoRA's; and (b) records about ten small autograd ops per factor (index_select,
  permute-copy, narrow, cat and their backwards), a fixed cost per module and step that matters when
  steps are short.

Anything else (chunk compute, a cache miss) falls through to the library's own method. :func:`patched`
installs the replacement on one layer instance.
"""

from __future__ import annotations

import contextlib
import functools
import types

import torch
import torch.nn.functional as F

from prolora.layer import PRoLoRALayer
from prolora.method import equations as eq


def _current(layer, name: str) -> tuple:
    """The four compact tensors of adapter ``name`` as the layer holds them now.

    Reads the ``ParameterDict``s' ``_parameters`` directly: ``ParameterDict.__getitem__`` goes through
    ``Module.__getattr__`` and is the largest cost of a decode step after the matmuls.
    """
    return (layer.prolora_A0._parameters.get(name), layer.prolora_A_u._parameters.get(name),
            layer.prolora_B0._parameters.get(name), layer.prolora_B_u._parameters.get(name))


def _stamp(tensors: tuple) -> tuple:
    """What must be unchanged for a cached expansion to be valid: identity, version and storage of each."""
    return tuple((id(t), t._version, t.data_ptr()) for t in tensors)


@functools.lru_cache(maxsize=64)
def flat_index(spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat gather indices ``(idx_a, idx_b)``: ``A = cat(a0, a_u).flatten()[idx_a].view(r, h)``, same for B.

    Obtained by running the library's own :func:`~prolora.method.equations.expand_a` / ``expand_b`` on
    tensors holding their element numbers, so every ``share`` / ``rotate`` variant is covered and the
    result is the library's layout by construction. Cached per :class:`~prolora.layer.ChunkSpec` (int64:
    twice the bytes of A and B, shared by every module of the same shape).
    """
    (sa, sb) = eq.chunk_shapes(spec.h, spec.o, spec.r, spec.u, spec.m, spec.n, spec.share)
    n_a0, n_b0 = sa[0] * sa[1], sb[0] * sb[1]
    a0 = torch.arange(n_a0).view(sa)
    a_u = n_a0 + torch.arange(spec.u * spec.h).view(spec.u, spec.h)
    b0 = torch.arange(n_b0).view(sb)
    b_u = n_b0 + torch.arange(spec.o * spec.u).view(spec.o, spec.u)
    idx_a = eq.expand_a(a0, a_u, spec.h, spec.r, spec.m, spec.stride_a, spec.rotate, spec.share)
    idx_b = eq.expand_b(b0, b_u, spec.o, spec.r, spec.n, spec.stride_b, spec.rotate, spec.share)
    return idx_a.flatten(), idx_b.flatten()


def _gather(chunk: torch.Tensor, extra: torch.Tensor, idx: torch.Tensor, shape) -> torch.Tensor:
    return torch.cat([chunk.reshape(-1), extra.reshape(-1)]).index_select(0, idx).view(shape)


def _fold(grad: torch.Tensor, idx: torch.Tensor, chunk: torch.Tensor, extra: torch.Tensor):
    """Adjoint of :func:`_gather`: scatter-add the dense gradient back onto (chunk, extra)."""
    flat = grad.new_zeros(chunk.numel() + extra.numel()).index_add_(0, idx, grad.reshape(-1))
    return flat[:chunk.numel()].view_as(chunk), flat[chunk.numel():].view_as(extra)


class LeanAdapter(torch.autograd.Function):
    """``(scaling · x·Aᵀ)·Bᵀ`` with A, B gathered from the chunks in forward and again in backward."""

    @staticmethod
    def forward(ctx, x, a0, a_u, b0, b_u, spec):
        idx_a, idx_b = flat_index(spec)
        z = F.linear(x, _gather(a0, a_u, idx_a.to(x.device), (spec.r, spec.h))) * spec.scaling
        ctx.save_for_backward(x, z, a0, a_u, b0, b_u)
        ctx.spec = spec
        return F.linear(z, _gather(b0, b_u, idx_b.to(x.device), (spec.o, spec.r)))

    @staticmethod
    def backward(ctx, grad_y):
        x, z, a0, a_u, b0, b_u = ctx.saved_tensors
        spec = ctx.spec
        idx_a, idx_b = (i.to(x.device) for i in flat_index(spec))
        b = _gather(b0, b_u, idx_b, (spec.o, spec.r))  # B side first: grad_z, then fold grad_B and free it
        grad_z = torch.matmul(grad_y, b) * spec.scaling  # (…, r)
        del b
        grad_b = grad_y.reshape(-1, spec.o).t() @ z.reshape(-1, spec.r)
        grad_b0, grad_b_u = _fold(grad_b, idx_b, b0, b_u)
        del grad_b
        grad_a = grad_z.reshape(-1, spec.r).t() @ x.reshape(-1, spec.h)  # A side: fold before grad_x exists
        grad_a0, grad_a_u = _fold(grad_a, idx_a, a0, a_u)
        del grad_a
        grad_x = None
        if ctx.needs_input_grad[0]:
            # torch.matmul, not a reshape of an mm: a view would stop autograd accumulating in place
            grad_x = torch.matmul(grad_z, _gather(a0, a_u, idx_a, (spec.r, spec.h)))
        return grad_x, grad_a0, grad_a_u, grad_b0, grad_b_u, None


def fast_adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
    """``PRoLoRALayer._adapter_output`` with the decode fast path and the lean training path (module doc)."""
    if torch.is_grad_enabled():
        a0 = self.prolora_A0[adapter_name]
        if a0.requires_grad:
            x = self.prolora_dropout[adapter_name](x.to(a0.dtype))
            a0, a_u, b0, b_u = _current(self, adapter_name)
            spec = self.prolora_spec[adapter_name]
            if self._lean:
                return LeanAdapter.apply(x, a0, a_u, b0, b_u, spec)
            idx_a, idx_b = (i.to(x.device) for i in flat_index(spec))  # gather, under plain autograd
            a = _gather(a0, a_u, idx_a, (spec.r, spec.h))
            return F.linear(F.linear(x, a) * spec.scaling, _gather(b0, b_u, idx_b, (spec.o, spec.r)))
    elif self.cache_expanded:
        hit = self._fast_cache.get(adapter_name)
        if hit is not None:
            tensors, stamp, a, b, scaling, identity = hit
            # valid while dropout is off and the layer holds the same tensor objects, unmodified
            if ((identity or not self.training) and x.dtype == a.dtype and _stamp(tensors) == stamp
                    and all(t is c for t, c in zip(tensors, _current(self, adapter_name)))):
                return F.linear(F.linear(x, a) * scaling, b)
        identity = isinstance(self.prolora_dropout[adapter_name], torch.nn.Identity)
        if identity or not self.training:  # (re)fill the fast cache from the library's own cache
            tensors = _current(self, adapter_name)
            a, b = self.expanded_factors(adapter_name)
            self._fast_cache[adapter_name] = (tensors, _stamp(tensors), a, b,
                                              self.prolora_spec[adapter_name].scaling, identity)
    return PRoLoRALayer._adapter_output(self, x, adapter_name)


@contextlib.contextmanager
def patched(layer, lean: bool = True):
    """Use :func:`fast_adapter_output` on ``layer`` (one instance) inside the block.

    ``lean=True``: training through :class:`LeanAdapter` (memory ≤ LoRA's, a Python backward);
    ``lean=False``: the same flat gathers under plain autograd (fastest, but A and B are saved for backward
    as in the library).
    """
    layer._fast_cache = {}
    layer._lean = lean
    layer._adapter_output = types.MethodType(fast_adapter_output, layer)
    try:
        yield layer
    finally:
        del layer._adapter_output
        del layer._fast_cache
        del layer._lean
