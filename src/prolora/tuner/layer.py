"""``PRoLoRALinear``: a PEFT tuner layer that adds PRoLoRA's ΔW·x to a frozen linear layer.

Supported base layers: ``torch.nn.Linear``, transformers ``Conv1D`` (GPT-2; weight stored as (h, o)), and
bitsandbytes ``Linear4bit`` / ``Linear8bitLt`` (the paper's QLoRA setting; merging dequantizes, adds ΔW
and requantizes, as PEFT's LoRA does). Several adapters live side by side, keyed by name, as in PEFT.

Compute (measured in ``benchmarks/``): in training, :class:`_AdapterFunction` gathers the full A (r, h)
and B (o, r) from the chunks with one flat ``index_select`` each (O(r·(h+o)), against the O(tokens·r·(h+o))
matmuls), runs the adapter exactly like LoRA and frees them at once; backward gathers them again and folds
the dense gradients back into the chunks with one ``index_add`` each, so a training step holds no more
memory than LoRA's (``lean_backward = False``: the same gathers under plain autograd, which keeps A and B
for backward). Without autograd (evaluation, generation, serving) the expanded factors are cached per
adapter and rebuilt only when a chunk changes (tracked by the tensors' identity and in-place version
counters), and a cache hit costs two ``F.linear`` calls, as LoRA. ``cache_expanded = False`` instead
computes straight from the chunks (:func:`~prolora.equations.chunked_adapter_forward`), keeping
only compact tensors in memory for serving many adapters.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.autograd.function import once_differentiable

from prolora import equations as eq

from .layout import FILE_ORDER, ChunkSpec, expand, flatten, gather_index, module_spec


def base_shape(base: nn.Module) -> tuple[int, int]:
    """(h, o) = (in_features, out_features) of a supported base layer; TypeError names unsupported types."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(base, Conv1D):
        h, o = base.weight.shape
        return h, o
    if isinstance(base, nn.Linear) or _is_bnb(base):
        return base.in_features, base.out_features
    raise TypeError(
        f"PRoLoRA cannot adapt {type(base).__name__}: supported base layers are torch.nn.Linear, "
        "transformers Conv1D and bitsandbytes Linear4bit/Linear8bitLt. Adjust target_modules."
    )


def _is_bnb(base: nn.Module) -> str | None:
    """'4bit' / '8bit' for bitsandbytes layers, else None (bitsandbytes is imported only if loaded)."""
    name = type(base).__name__
    if type(base).__module__.startswith("bitsandbytes"):
        return {"Linear4bit": "4bit", "Linear8bitLt": "8bit"}.get(name)
    return None


class PRoLoRALayer(BaseTunerLayer):
    """Per-adapter PRoLoRA state of one module: the four compact tensors and their :class:`ChunkSpec`."""

    adapter_layer_names = FILE_ORDER
    other_param_names = ("prolora_spec", "prolora_dropout")
    cache_expanded = True  # see module docstring
    lean_backward = True  # training through _AdapterFunction (module docstring); False: plain autograd

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.prolora_A0 = nn.ParameterDict({})
        self.prolora_B0 = nn.ParameterDict({})
        self.prolora_A_u = nn.ParameterDict({})
        self.prolora_B_u = nn.ParameterDict({})
        self.prolora_dropout = nn.ModuleDict({})
        self.prolora_spec: dict[str, ChunkSpec] = {}
        self._expanded: dict[str, tuple] = {}  # name -> (key, A, B, compact tensors)
        self._empties: dict[
            str, tuple
        ] = {}  # name -> (A_0, A_u, B_0, B_u) with zero-element tensors (_compact)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.in_features, self.out_features = base_shape(self.get_base_layer())
        self.fan_in_fan_out = type(self.get_base_layer()).__name__ == "Conv1D"
        self.kwargs = kwargs

    # ----------------------------------------------------------------------------------------- creation
    def update_layer(
        self,
        adapter_name: str,
        values: dict,
        lora_dropout: float,
        rotation: bool,
        init: str,
        share: str,
        rotate_dim: str,
        module_name: str = "",
        inference_mode: bool = False,
        init_weights: bool = True,
        use_rslora: bool = False,
    ) -> None:
        """Add adapter ``adapter_name``: allocate A_0, B_0, A_u, B_u and initialise them (Eq. 5).

        Raises:
            ValueError: when r/u/m/n do not fit this module (e.g. m > h), naming the module.
        """
        spec = module_spec(
            self.in_features,
            self.out_features,
            values,
            rotation=rotation,
            rotate_dim=rotate_dim,
            share=share,
            use_rslora=use_rslora,
            where=module_name or type(self.get_base_layer()).__name__,
        )
        self.prolora_spec[adapter_name] = spec
        self._empties.pop(adapter_name, None)
        # u = 0 (no unshared part) or u = r (no shared part) would leave two tensors with zero elements: they are
        # not parameters (nothing to train; generic tooling indexes every adapter parameter), but the adapter
        # file keeps their keys, as zero-size tensors (see PRoLoRAModel._get_adapter_state_dict)
        for name, shape in zip(self.adapter_layer_names, spec.file_shapes(), strict=True):
            params = getattr(self, name)
            if math.prod(shape):
                params[adapter_name] = nn.Parameter(torch.zeros(shape))
            elif adapter_name in params:  # an adapter re-created with another u
                del params[adapter_name]
        dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.prolora_dropout[adapter_name] = dropout.train(self.get_base_layer().training)
        self.reset_parameters(adapter_name, init, init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @torch.no_grad()
    def reset_parameters(self, adapter_name: str, init: str = "rectified", init_weights: bool = True) -> None:
        """B = 0; A_u ~ U(±1/√h); A_0 ~ U(±1/√h) ("rectified", Eq. 5) or U(±1/√width) ("vanilla", ^-i).

        1/√fan_in is ``kaiming_uniform_(a=√5)``'s bound, LoRA's default init of A in PEFT. With
        ``init_weights=False`` B_0 and B_u are drawn from U(±1/√r) instead of zero (PEFT's test convention).
        """
        spec = self.prolora_spec[adapter_name]
        a0, a_u, b0, b_u = self._compact(adapter_name)
        bound_u = eq.rectified_bound(spec.h)
        a_u.uniform_(-bound_u, bound_u)
        bound_0 = bound_u if init == "rectified" else 1.0 / math.sqrt(max(a0.shape[1], 1))
        a0.uniform_(-bound_0, bound_0)
        bound_b = 1.0 / math.sqrt(spec.r)
        for b in (b0, b_u):
            if init_weights:
                b.zero_()
            else:
                b.uniform_(-bound_b, bound_b)

    # ---------------------------------------------------------------------------------------- the math
    def _compact(self, adapter_name: str) -> tuple:
        """``(A_0, A_u, B_0, B_u)`` of an adapter, read from the dicts' storage (``ParameterDict.__getitem__``
        goes through ``Module.__getattr__``, the largest cost of a decode step after the matmuls).

        A zero-element tensor (A_u, B_u when u = 0; A_0, B_0 when u = r) is not a parameter: it is served as
        an empty tensor of the other tensors' dtype and device, kept per adapter so that it has a stable
        identity for the expansion cache.
        """
        try:
            return (
                self.prolora_A0._parameters[adapter_name],
                self.prolora_A_u._parameters[adapter_name],
                self.prolora_B0._parameters[adapter_name],
                self.prolora_B_u._parameters[adapter_name],
            )
        except KeyError:
            return self._compact_with_empties(adapter_name)

    def _compact_with_empties(self, adapter_name: str) -> tuple:
        dicts = (
            self.prolora_A0._parameters,
            self.prolora_A_u._parameters,
            self.prolora_B0._parameters,
            self.prolora_B_u._parameters,
        )
        present = tuple(d.get(adapter_name) for d in dicts)
        hit = self._empties.get(adapter_name)
        if hit is not None and all(p is t for p, t in zip(present, hit, strict=False) if p is not None):
            like = next(p for p in present if p is not None)
            if all(
                t.dtype == like.dtype and t.device == like.device
                for p, t in zip(present, hit, strict=False)
                if p is None
            ):
                return hit
        if all(p is None for p in present):
            raise KeyError(adapter_name)
        like = next(p for p in present if p is not None)
        shapes = self.prolora_spec[adapter_name].flat_shapes()  # (A_0, A_u, B_0, B_u), as _compact
        with torch.inference_mode(
            False
        ):  # normal tensors: autograd may save them (see equations.normal_tensors)
            hit = tuple(p if p is not None else like.new_zeros(shapes[i]) for i, p in enumerate(present))
        self._empties[adapter_name] = hit
        return hit

    def expanded_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Full ``(A, B)`` of shapes (r, h) and (o, r) from the compact tensors (Eq. 4).

        Differentiable while autograd records; otherwise served from a cache that is rebuilt when any of
        the four tensors changes (object, in-place version counter, storage, dtype or device).
        """
        spec = self.prolora_spec[adapter_name]
        tensors = self._compact(adapter_name)
        tracking = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        key = _cache_key(tensors) if not tracking and self.cache_expanded else None
        if key is not None:
            hit = self._expanded.get(adapter_name)
            if hit is not None and hit[0] == key:
                return hit[1], hit[2]
            # cached factors are normal tensors even when built during an inference-mode forward: a later
            # forward with autograd (frozen adapter, input that requires grad) may save them for backward
            with torch.inference_mode(False), torch.no_grad():
                a, b = self._expand_factors(tensors, spec)
            self._expanded[adapter_name] = (key, a, b, tensors)  # holding tensors keeps their ids unique
            return a, b
        return self._expand_factors(tensors, spec)

    @staticmethod
    def _expand_factors(tensors: tuple, spec: ChunkSpec) -> tuple[torch.Tensor, torch.Tensor]:
        return expand(flatten(tensors), spec)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW = (lora_alpha / r) · B · A, shape (o, h) — transposed to (h, o) for ``Conv1D`` bases."""
        a, b = self.expanded_factors(adapter_name)
        delta = eq.delta_weight(a, b, self.prolora_spec[adapter_name].scaling)
        return delta.t() if self.fan_in_fan_out else delta

    def _adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """ΔW·dropout(x) for one adapter, in the adapter's dtype. x: (…, h) → (…, o)."""
        tensors = self._compact(adapter_name)
        a0 = tensors[0]
        if torch.is_grad_enabled():
            if any(t.requires_grad for t in tensors):
                spec = self.prolora_spec[adapter_name]
                dropout = self.prolora_dropout[adapter_name]
                x = x.to(a0.dtype)
                if self.lean_backward:
                    keep, p = None, 0.0
                    if isinstance(dropout, nn.Dropout) and dropout.training and dropout.p > 0:
                        p = (
                            dropout.p
                        )  # dropout inside the function: it keeps a 1-byte mask, not 2 copies of x
                        keep = torch.empty(x.shape, dtype=torch.bool, device=x.device).bernoulli_(1 - p)
                    return _AdapterFunction.apply(x, keep, p, *tensors, spec)
                x = dropout(x)
                a, b = expand(flatten(tensors), spec)  # the same gather, recorded by autograd
                return F.linear(F.linear(x, a) * spec.scaling, b)
        elif self.cache_expanded:  # fast path: a valid cache entry and no active dropout
            hit = self._expanded.get(adapter_name)
            dropout = self.prolora_dropout[adapter_name]
            if (
                hit is not None
                and hit[0] == _cache_key(tensors)
                and x.dtype == a0.dtype
                and (not dropout.training or isinstance(dropout, nn.Identity))
            ):
                return F.linear(F.linear(x, hit[1]) * self.prolora_spec[adapter_name].scaling, hit[2])
        spec = self.prolora_spec[adapter_name]
        x = self.prolora_dropout[adapter_name](x.to(a0.dtype))
        if not self.cache_expanded and spec.chunked:
            rotate = spec.rotate is not None
            idx_a = eq.roll_indices(spec.shared, spec.m, spec.stride_a, rotate, +1, a0.device)
            idx_b = eq.roll_indices(spec.shared, spec.n, spec.stride_b, rotate, -1, a0.device)
            out = eq.chunked_adapter_forward(x, a0, tensors[2], spec.h, spec.o, spec.m, spec.n, idx_a, idx_b)
            if spec.u:
                out = out + F.linear(F.linear(x, tensors[1]), tensors[3])
            return out * spec.scaling
        a, b = self.expanded_factors(adapter_name)
        return F.linear(F.linear(x, a) * spec.scaling, b)

    # ---------------------------------------------------------------------------------- merge / unmerge
    def _base_weight(self) -> torch.Tensor:
        """The base weight as a dense (o, h) tensor (dequantized for bitsandbytes)."""
        base = self.get_base_layer()
        kind = _is_bnb(base)
        if kind:
            from peft.utils.integrations import dequantize_bnb_weight

            if kind == "4bit" and getattr(base.weight.quant_state, "packing_format_for_cpu", False):
                # bitsandbytes repacks 4-bit weights for its CPU kernel on the first eval-mode forward;
                # dequantize_4bit only reads the original layout, so undo the repacking first (as bnb's own
                # state_dict saving does).
                from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

                base.weight.data, base.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    base.weight.data, base.weight.quant_state
                )
            state = base.weight.quant_state if kind == "4bit" else base.state
            if kind == "8bit" and state.SCB is None:
                state.SCB = base.weight.SCB
            return dequantize_bnb_weight(base.weight, state=state)
        return base.weight.data.t() if self.fan_in_fan_out else base.weight.data

    def _set_base_weight(self, w: torch.Tensor) -> None:
        """Store a dense (o, h) weight back in the base layer's own format (requantizing bitsandbytes)."""
        base = self.get_base_layer()
        kind = _is_bnb(base)
        if kind == "4bit":
            import bitsandbytes as bnb

            kwargs = {k: v for k, v in base.weight.__dict__.items() if not k.startswith("_") and k != "data"}
            kwargs.update(requires_grad=False, bnb_quantized=False)
            base.weight = bnb.nn.Params4bit(w.to("cpu"), **kwargs).to(base.weight.device)
        elif kind == "8bit":
            import bitsandbytes as bnb

            old = base.weight
            base.weight = bnb.nn.Int8Params(
                w.to("cpu"), requires_grad=False, has_fp16_weights=old.has_fp16_weights
            ).to(old.device)
            base.state.reset_grads()
        else:
            base.weight.data = (w.t() if self.fan_in_fan_out else w).contiguous()

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' ΔW into the base weight (exact for float bases; rounded for quantized ones).

        Raises:
            ValueError: with ``safe_merge=True``, when the merged weight would contain NaN or inf.
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for name in adapter_names:
            if name not in self.prolora_spec:
                continue
            if _is_bnb(self.get_base_layer()):
                warnings.warn(
                    "Merging into a quantized base rounds the result (as PEFT's LoRA does).", stacklevel=2
                )
            w = self._base_weight()
            delta = self.get_delta_weight(name)
            delta = delta.t() if self.fan_in_fan_out else delta
            merged = w.to(torch.float32) + delta.detach().to(w.device, torch.float32)
            if safe_merge and not torch.isfinite(merged).all():
                # peft's words first (its tests match them by regex; tests/test_peft_conformance.py), then ours
                raise ValueError(
                    f"NaNs detected in the merged weights. The adapter {name} seems to be broken "
                    f"(NaN/inf in the merged weight of adapter {name!r}); nothing was merged."
                )
            self._set_base_weight(merged.to(w.dtype))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract every merged ΔW again (in reverse order)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.prolora_spec:
                w = self._base_weight()
                delta = self.get_delta_weight(name)
                delta = delta.t() if self.fan_in_fan_out else delta
                self._set_base_weight(
                    (w.to(torch.float32) - delta.detach().to(w.device, torch.float32)).to(w.dtype)
                )

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """True: W' = W + ΔW with ΔW = B·A of rank ≤ r (Eq. 4), so peft's ``convert_to_lora`` /
        ``save_as_lora`` (which factor :meth:`get_delta_weight` by SVD) are exact, up to float rounding, at any
        ``rank ≥ r`` (or a float threshold, which then picks a rank ≤ r per module)."""
        return True

    def delete_adapter(self, adapter_name: str) -> None:
        self._expanded.pop(adapter_name, None)
        self._empties.pop(adapter_name, None)
        super().delete_adapter(adapter_name)


def _cache_key(tensors: tuple) -> tuple | None:
    """What must be unchanged for a cached expansion to be valid: object, version, storage, dtype, device.

    ``None`` (do not cache) for inference tensors (adapters created under ``torch.inference_mode``), which
    have no version counter to detect in-place changes.
    """
    if any(t.is_inference() for t in tensors):
        return None
    return tuple((id(t), t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)


class _AdapterFunction(torch.autograd.Function):
    """``(scaling · dropout(x)·Aᵀ)·Bᵀ`` with A, B gathered from the chunks in forward and again in backward.

    Saves x, the rank-r activation and the compact tensors only: the expanded A and B (r·(h+o) floats,
    which LoRA never allocates since its A and B are the parameters) live only while they are used, one
    at a time. Dropout is applied here from a boolean mask ``keep`` (kept entries scaled by 1/(1−p), as
    ``nn.Dropout``), so backward holds x — the same tensor for every module reading it, as q, k and v do —
    and one byte per element, where ``nn.Dropout`` before the function held a float mask and the dropped
    copy of x for each module (8 bytes per element and module; half of a training step's activations on
    SmolLM2-135M). Backward folds the dense gradients of A and B back onto the four compact tensors (one
    ``index_add`` each) before the input gradient is allocated. Under ``torch.autocast`` backward runs
    with the forward's autocast state (as autograd does for built-in ops), and the chunk gradients are
    accumulated in the chunks' own dtype.
    """

    @staticmethod
    def forward(ctx, x, keep, p, a0, a_u, b0, b_u, spec):
        flat = flatten((a0, a_u, b0, b_u))
        idx = gather_index(spec, x.device)
        rh = spec.r * spec.h
        # A, then B: each expanded factor is alive only for its own matmul
        z = F.linear(_dropped(x, keep, p), flat.index_select(0, idx[:rh]).view(spec.r, spec.h)).mul_(
            spec.scaling
        )
        y = F.linear(z, flat.index_select(0, idx[rh:]).view(spec.o, spec.r))
        ctx.save_for_backward(x, keep, z, a0, a_u, b0, b_u)  # the parameters themselves: no copy is kept
        ctx.spec, ctx.p = spec, p
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        device, enabled, dtype = ctx.autocast
        if not enabled:  # entering a disabled autocast context still costs ~5 µs per module
            return _AdapterFunction._backward(ctx, grad_y)
        with torch.autocast(device, dtype=dtype):
            return _AdapterFunction._backward(ctx, grad_y)

    @staticmethod
    def _backward(ctx, grad_y):
        x, keep, z, *compact = ctx.saved_tensors
        spec = ctx.spec
        idx = gather_index(spec, x.device)
        rh = spec.r * spec.h
        flat = flatten(compact)
        b = flat.index_select(0, idx[rh:]).view(spec.o, spec.r)
        grad_z = torch.matmul(grad_y, b).mul_(spec.scaling)  # (…, r)
        del b
        # fold ∂A = grad_zᵀ·x and ∂B = grad_yᵀ·z onto the compact tensors before ∂x (tokens × h) is allocated
        grad_flat = flat.new_zeros(flat.numel())
        grad_a = grad_z.reshape(-1, spec.r).t() @ _dropped(x, keep, ctx.p).reshape(-1, spec.h)
        grad_flat.index_add_(0, idx[:rh], grad_a.reshape(-1).to(flat.dtype))
        del grad_a
        grad_b = grad_y.reshape(-1, spec.o).t() @ z.reshape(-1, spec.r)
        grad_flat.index_add_(0, idx[rh:], grad_b.reshape(-1).to(flat.dtype))
        del grad_b
        grad_x = None
        if ctx.needs_input_grad[0]:
            # torch.matmul, not a reshaped mm: a view would stop autograd from accumulating in place
            grad_x = torch.matmul(grad_z, flat.index_select(0, idx[:rh]).view(spec.r, spec.h))
            if keep is not None:
                grad_x = grad_x.mul_(keep).mul_(1 / (1 - ctx.p))
        return (grad_x, None, None, *spec.split(grad_flat), None)


def _dropped(x: torch.Tensor, keep: torch.Tensor | None, p: float) -> torch.Tensor:
    """Dropout of ``x`` from its boolean ``keep`` mask: x·keep/(1−p), as ``nn.Dropout``; x itself when no mask."""
    return x if keep is None else (x * keep).mul_(1 / (1 - p))


def rows_of(names: list, rows: int) -> list:
    """One entry of ``names`` (one per batch row) per row of an input with ``rows`` rows.

    Most modules see (batch, seq, h) inputs: ``rows`` is the batch. Some see the batch flattened to
    (batch·seq, h) (OPT's ``fc1``/``fc2`` reshape before their MLP): batch-major, so each name covers
    ``rows / len(names)`` consecutive rows.

    Raises:
        ValueError: when ``rows`` is not a multiple of ``len(names)``, naming both.
    """
    if rows == len(names):
        return names
    if names and rows % len(names) == 0:
        per = rows // len(names)
        return [name for name in names for _ in range(per)]
    raise ValueError(
        f"Length of `adapter_names` should be the same as the number of inputs, but got "
        f"{len(names)} and {rows} respectively: adapter_names has {len(names)} entries for a batch of "
        f"{rows} rows (nor are the rows a batch-major flattening of {len(names)} rows); give one adapter "
        "name (or '__base__') per batch row."
    )


class PRoLoRALinear(nn.Module, PRoLoRALayer):
    """A base linear layer (``nn.Linear``, ``Conv1D``, bitsandbytes 4/8-bit) plus PRoLoRA adapters.

    ``forward(x)`` returns ``base(x) + Σ_active ΔW_a·dropout(x)`` (Eq. 1 with Eq. 4's ΔW). Inputs are cast
    to the adapter's dtype and the sum back to the base output's dtype (a bf16 base with fp32 adapters
    computes the adapter in fp32).
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        super().__init__()
        PRoLoRALayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)
        self.train(base_layer.training)  # a model wrapped in eval mode keeps dropout off

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_names = kwargs.pop("adapter_names", None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name in self.prolora_spec:
                result = result + self._adapter_output(x, name).to(result.dtype)
        return result

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: list[str], **kwargs: Any
    ) -> torch.Tensor:
        """Row ``i`` of the batch uses adapter ``adapter_names[i]`` (``"__base__"``: none); a module that sees
        the batch flattened to (batch·seq, h) rows (OPT's ``fc1``/``fc2``) is handled by :func:`rows_of`."""
        if self.merged:
            raise ValueError(
                "Cannot pass `adapter_names` when there are merged adapters, please call "
                "`unmerge_adapter` first."
            )
        adapter_names = rows_of(adapter_names, x.shape[0])
        result = self.base_layer(x, *args, **kwargs)
        for name in set(adapter_names):
            if name not in self.prolora_spec:
                continue
            rows = [i for i, a in enumerate(adapter_names) if a == name]
            result[rows] += self._adapter_output(x[rows], name).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "prolora." + super().__repr__()
