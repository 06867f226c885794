"""Single adapted linear layers for the layer-level sections: PEFT's LoRA, prolora's PRoLoRA, the naive one.

Every layer is built the way users build them (``peft.get_peft_model`` on a one-module holder) so the
LoRA baseline is PEFT's own ``lora.Linear`` and the PRoLoRA layer is exactly what ``get_prolora_model``
installs. :func:`stub_base` swaps the frozen base for a stub so that what is timed is what the adapter
adds (the base matmul is common to all variants and would otherwise dominate at large h).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

import prolora

from .naive import NaivePRoLoRALinear


@dataclass(frozen=True)
class PRoLoRAShape:
    """PRoLoRA's knobs for one adapter: rank r, unshared rank u, sharing rates m (A) and n (B)."""

    r: int
    u: int = 1
    m: int = 7
    n: int = 7

    def label(self) -> str:
        return f"r={self.r}, u={self.u}, m={self.m}, n={self.n}"


class _Holder(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.proj = base


def make_base(h: int, o: int, seed: int = 0) -> nn.Linear:
    """A frozen ``nn.Linear(h, o)`` without bias, seeded."""
    torch.manual_seed(seed)
    base = nn.Linear(h, o, bias=False)
    base.requires_grad_(False)
    return base


def lora_layer(base: nn.Linear, r: int, alpha: int = 16) -> nn.Module:
    """PEFT's ``lora.Linear`` on ``base`` (rank r, no dropout), with B randomised so ΔW ≠ 0."""
    from peft import LoraConfig, get_peft_model

    holder = get_peft_model(
        _Holder(base), LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["proj"])
    )
    layer = holder.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.02)
    return layer


def prolora_layer(base: nn.Linear, shape: PRoLoRAShape, alpha: int = 16) -> nn.Module:
    """prolora's ``PRoLoRALinear`` on ``base`` (no dropout), with B_0 and B_u randomised so ΔW ≠ 0."""
    config = prolora.PRoLoRAConfig(
        r=shape.r,
        unshared_r=shape.u,
        sharing_rate_a=shape.m,
        sharing_rate_b=shape.n,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=["proj"],
    )
    layer = prolora.get_prolora_model(_Holder(base), config).base_model.model.proj
    with torch.no_grad():
        layer.prolora_B0["default"].normal_(0, 0.02)
        layer.prolora_B_u["default"].normal_(0, 0.02)
    return layer


def naive_layer(layer: nn.Module) -> NaivePRoLoRALinear:
    """The materialise-every-forward reference holding copies of ``layer``'s tensors (same function)."""
    return NaivePRoLoRALinear(layer)


def trainable(layer: nn.Module) -> list[nn.Parameter]:
    return [p for p in layer.parameters() if p.requires_grad]


class StubBase(nn.Module):
    """Stands in for a frozen base layer: returns a fixed, precomputed output (no work, no allocation)."""

    def __init__(self, weight: torch.Tensor, out: torch.Tensor) -> None:
        super().__init__()
        self.weight = weight
        self.out = out

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.out


@contextlib.contextmanager
def stub_base(layer: nn.Module, out: torch.Tensor):
    """Temporarily replace ``layer.base_layer`` by a :class:`StubBase` returning ``out``."""
    real = layer.base_layer
    layer.base_layer = StubBase(real.weight, out)
    try:
        yield layer
    finally:
        layer.base_layer = real


def train_step(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    """A closure doing one forward + backward of ``layer`` (gradients reset to None first)."""
    params = trainable(layer)

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        layer(x).backward(grad_out)

    return step


def decode_step(layer: nn.Module, x: torch.Tensor):
    """A closure doing one forward of ``layer`` without autograd, as generation does."""

    def step() -> torch.Tensor:
        with torch.no_grad():
            return layer(x)

    return step
