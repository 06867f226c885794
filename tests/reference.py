"""An independent dense implementation of PRoLoRA's equations, written from the issue/paper text only.

It builds A and B with explicit ``torch.roll`` and concatenation loops (the library uses index_select), and
is used by the tests as the ground truth.
"""

import math

import torch


def ref_stride(r, u, k):
    return max((r - u) // k, 1)


def ref_A(a0, a_u, h, r, m, s, rotate="rank", share="hidden"):
    """A (r × h) = [A_shared ; A_u]."""
    R = r - a_u.shape[0]
    copies = []
    for i in range(m):
        if rotate is None:
            copies.append(a0.clone())
        else:
            copies.append(torch.roll(a0, shifts=i * s, dims=0 if rotate == "rank" else 1))
    if share == "hidden":
        shared = torch.cat(copies, dim=1)[:, :h]
    else:
        shared = torch.cat(copies, dim=0)[:R, :]
    return torch.cat([shared, a_u], dim=0)


def ref_B(b0, b_u, o, r, n, s, rotate="rank", share="hidden"):
    """B (o × r) = [B_shared | B_u]."""
    R = r - b_u.shape[1]
    copies = []
    for j in range(n):
        if rotate is None:
            copies.append(b0.clone())
        else:
            copies.append(torch.roll(b0, shifts=j * s, dims=1 if rotate == "rank" else 0))
    if share == "hidden":
        shared = torch.cat(copies, dim=0)[:o, :]
    else:
        shared = torch.cat(copies, dim=1)[:, :R]
    return torch.cat([shared, b_u], dim=1)


def ref_delta(a0, b0, a_u, b_u, h, o, r, m, n, alpha, rotate="rank", share="hidden", s_a=None, s_b=None):
    u = a_u.shape[0]
    s_a = ref_stride(r, u, m) if s_a is None else s_a
    s_b = ref_stride(r, u, n) if s_b is None else s_b
    A = ref_A(a0, a_u, h, r, m, s_a, rotate, share)
    B = ref_B(b0, b_u, o, r, n, s_b, rotate, share)
    return (alpha / r) * B @ A


def ref_chunk_shapes(h, o, r, u, m, n, share="hidden"):
    R = r - u
    if share == "hidden":
        return (R, math.ceil(h / m)), (math.ceil(o / n), R)
    return (math.ceil(R / m), h), (o, math.ceil(R / n))


def ref_params(h, o, r, u, m, n):
    return u * (h + o) + (r - u) * (math.ceil(h / m) + math.ceil(o / n))
