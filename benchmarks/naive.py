"""The authors' approach, as a reference to beat: materialise the full A and B on every forward.

The authors' code (and the paper's Eqs. 2–4 read literally) rebuilds ``A`` (r, h) and ``B`` (o, r) from
the chunks in every forward pass: ``m`` rolled copies of A_0 concatenated along the hidden dimension, cut
to h columns, stacked on A_u (and the mirror for B), then the adapter runs as LoRA's two matmuls. That is
done here with one ``torch.roll`` per copy and ``torch.cat``, with no caching, whether or not autograd is
recording. This module is a benchmark baseline only; it is not part of the library.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def materialise(
    a0: torch.Tensor,
    a_u: torch.Tensor,
    b0: torch.Tensor,
    b_u: torch.Tensor,
    h: int,
    o: int,
    m: int,
    n: int,
    stride_a: int,
    stride_b: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full ``(A, B)`` by the paper's literal roll-and-concatenate (Eq. 4, rotation along the rank)."""
    a_shared = torch.cat([torch.roll(a0, shifts=i * stride_a, dims=0) for i in range(m)], dim=1)[:, :h]
    b_shared = torch.cat([torch.roll(b0, shifts=j * stride_b, dims=1) for j in range(n)], dim=0)[:o, :]
    return torch.cat([a_shared, a_u], dim=0), torch.cat([b_shared, b_u], dim=1)


class NaivePRoLoRALinear(nn.Module):
    """A frozen base linear plus one PRoLoRA adapter whose A and B are rebuilt on every forward.

    Built from a :class:`prolora.PRoLoRALinear` (same base layer, copies of its four compact tensors), so
    both compute the same function; only the way A and B are obtained differs.
    """

    def __init__(self, layer, adapter_name: str = "default") -> None:
        super().__init__()
        spec = layer.prolora_spec[adapter_name]
        self.base_layer = layer.base_layer
        self.spec = spec
        self.a0 = nn.Parameter(layer.prolora_A0[adapter_name].detach().clone())
        self.a_u = nn.Parameter(layer.prolora_A_u[adapter_name].detach().clone())
        self.b0 = nn.Parameter(layer.prolora_B0[adapter_name].detach().clone())
        self.b_u = nn.Parameter(layer.prolora_B_u[adapter_name].detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        a, b = materialise(self.a0, self.a_u, self.b0, self.b_u, s.h, s.o, s.m, s.n, s.stride_a, s.stride_b)
        return self.base_layer(x) + F.linear(F.linear(x, a), b) * s.scaling
