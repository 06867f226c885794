"""PRoLoRA's equations (paper Section 3.1) as pure functions over tensors.

Notation (paper Section 3.1): a frozen weight ``W0`` of shape ``(o, h)``, rank ``r``, unshared rank ``u``,
sharing rates ``m`` (chunks of A along its hidden dimension h) and ``n`` (chunks of B along o), base
strides ``s_A`` and ``s_B``. ``R = r - u`` is the shared rank.

Trainable tensors of one module (all that is stored):

==========  ======================  ===========================================
tensor      shape                   role
==========  ======================  ===========================================
``a0``      (R, ceil(h/m))          shared chunk A_0, broadcast m times
``b0``      (ceil(o/n), R)          shared chunk B_0, broadcast n times
``a_u``     (u, h)                  unshared rows of A
``b_u``     (o, u)                  unshared columns of B
==========  ======================  ===========================================

The full matrices are ``A = [A_shared ; a_u]`` (r, h) and ``B = [B_shared | b_u]`` (o, r), and
``ΔW = (lora_alpha / r) · B · A`` (Eq. 4 with LoRA's scaling restored, Section 4).

Table 4 variants: ``share`` says along which dimension the chunks tile the full matrix ("hidden": the
paper's broadcast reduction; "rank": the rank dimension is cut into chunks instead), ``rotate`` along which
dimension each copy is rolled ("rank": the paper's rotation enhancement; "hidden": rolled along the
hidden dimension; ``None``: no rotation, i.e. CLoRA / PRoLoRA^-r).
"""

from __future__ import annotations

import functools
import math

import torch

SHARE_DIMS = ("hidden", "rank")
ROTATE_DIMS = ("rank", "hidden", None)


def normal_tensors(fn):
    """Decorator for cached tensor factories: build the tensors outside ``torch.inference_mode``.

    A tensor created under inference mode is an "inference tensor" that autograd refuses to save for
    backward; a cached index built during an inference-mode forward would break every later merge or
    training step that gathers with it. Built under ``inference_mode(False)`` it is a normal tensor, usable
    in and out of inference mode, so cached results do not depend on which mode came first.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    return wrapper


def trainable_params(h: int, o: int, r: int, u: int = 0, m: int = 1, n: int = 1) -> int:
    """Trainable parameters of one PRoLoRA module (Section 3.1, after Eq. 4).

    ``u·(h+o) + (r−u)·(ceil(h/m) + ceil(o/n))`` for a base weight of shape (o, h). With ``u = r`` (or
    ``m = n = 1``) this is LoRA's ``r·(h+o)``. The paper writes ``h(r−u)/m``; we use ``ceil`` because the
    shared chunk A_0 must cover all h columns when m does not divide h. The count is the same for the
    Table 4 variants that cut the rank dimension instead (``share="rank"``).
    """
    return u * (h + o) + (r - u) * (math.ceil(h / m) + math.ceil(o / n))


def default_stride(r: int, u: int, sharing_rate: int) -> int:
    """Base stride ``max(⌊(r−u)/k⌋, 1)`` for k = m (A) or n (B) (Section 3.1, after Eq. 3).

    The paper writes ``max(⌊r/m⌋, 1)`` for RoLoRA, where u = 0; the authors' code uses the shared rank
    ``r − u``, which is what the rolled chunks have.
    """
    return max((r - u) // sharing_rate, 1)


def chunk_shapes(h: int, o: int, r: int, u: int, m: int, n: int, share: str = "hidden"):
    """Shapes of ``(a0, b0)`` for a base weight (o, h); see the module docstring.

    With ``share="rank"`` (a Table 4 variant) the shared rank ``R`` is cut instead:
    ``a0`` is (ceil(R/m), h) and ``b0`` is (o, ceil(R/n)).
    """
    shared = r - u
    if share == "hidden":
        return (shared, math.ceil(h / m)), (math.ceil(o / n), shared)
    if share == "rank":
        return (math.ceil(shared / m), h), (o, math.ceil(shared / n))
    raise ValueError(f"share={share!r} is not one of {SHARE_DIMS}")


@functools.lru_cache(maxsize=256)
@normal_tensors
def _roll_index(size: int, copies: int, stride: int, device: torch.device) -> torch.Tensor:
    """Flat index (copies·size,) whose block i is ``(k − i·stride) mod size``: ``torch.roll`` by ``i·stride``."""
    k = torch.arange(size, device=device)
    i = torch.arange(copies, device=device).unsqueeze(1)
    return ((k - i * stride) % max(size, 1)).flatten()


def broadcast_rotate(
    chunk: torch.Tensor, copies: int, cat_dim: int, roll_dim: int | None, stride: int, length: int
) -> torch.Tensor:
    """Broadcast reduction + rotation enhancement (Eqs. 2–3): ``Roll(C, 0·s) ⊕ Roll(C, 1·s) ⊕ …``, cut.

    Concatenates ``copies`` copies of the 2-D ``chunk`` along ``cat_dim``, copy ``i`` rolled by ``i·stride``
    along ``roll_dim`` (``torch.roll`` semantics: element k moves to k + shift), and keeps the first
    ``length`` entries along ``cat_dim``. ``roll_dim=None`` broadcasts plain copies (CLoRA, Eq. 2).

    All copies come from one ``index_select`` (backward: one ``index_add``) instead of ``copies`` separate
    rolls and a concatenation: the same values, several times faster on small chunks.
    """
    rd = cat_dim if roll_dim is None else roll_dim
    size = chunk.shape[rd]
    idx = _roll_index(size, copies, 0 if roll_dim is None else stride, chunk.device)
    out = chunk.index_select(rd, idx)
    if rd != cat_dim:
        # (copies·size) along rd -> (copies, size) -> move the copy axis next to cat_dim and merge them
        out = out.unflatten(rd, (copies, size)).permute(1, 0, 2)
        other = chunk.shape[1 - rd]
        out = out.reshape(size, copies * other) if rd == 0 else out.reshape(copies * other, size)
    return out.narrow(cat_dim, 0, length)


def _axes(share: str, rotate: str | None, rank_dim: int) -> tuple[int, int | None]:
    """(concatenation dim, roll dim) of a factor whose rank dimension is ``rank_dim`` (0 for A, 1 for B)."""
    hidden_dim = 1 - rank_dim
    cat_dim = hidden_dim if share == "hidden" else rank_dim
    roll_dim = {"rank": rank_dim, "hidden": hidden_dim, None: None}[rotate]
    return cat_dim, roll_dim


def expand_a(
    a0: torch.Tensor,
    a_u: torch.Tensor,
    h: int,
    r: int,
    m: int,
    stride: int,
    rotate: str | None = "rank",
    share: str = "hidden",
) -> torch.Tensor:
    """Full ``A`` (r, h) = ``[A_0 ⊕_h A_1 ⊕_h … ⊕_h A_{m−1} ; A_u]`` cut to h columns (Eq. 4, right factor).

    ``A_i = Roll(A_0, i·s_A)`` along the rank dimension (dim 0) by default. ``a0``: (r−u, ceil(h/m)) (see
    :func:`chunk_shapes` for ``share="rank"``); ``a_u``: (u, h). Differentiable in ``a0`` and ``a_u``.
    """
    cat_dim, roll_dim = _axes(share, rotate, rank_dim=0)
    length = h if cat_dim == 1 else r - a_u.shape[0]
    shared = broadcast_rotate(a0, m, cat_dim, roll_dim, stride, length)
    return torch.cat([shared, a_u], dim=0)


def expand_b(
    b0: torch.Tensor,
    b_u: torch.Tensor,
    o: int,
    r: int,
    n: int,
    stride: int,
    rotate: str | None = "rank",
    share: str = "hidden",
) -> torch.Tensor:
    """Full ``B`` (o, r) = ``[B_0 ⊕_v B_1 ⊕_v … ⊕_v B_{n−1} | B_u]`` cut to o rows (Eq. 4, left factor).

    ``B_j = Roll(B_0, j·s_B)`` along the rank dimension (dim 1) by default. ``b0``: (ceil(o/n), r−u);
    ``b_u``: (o, u).
    """
    cat_dim, roll_dim = _axes(share, rotate, rank_dim=1)
    length = o if cat_dim == 0 else r - b_u.shape[1]
    shared = broadcast_rotate(b0, n, cat_dim, roll_dim, stride, length)
    return torch.cat([shared, b_u], dim=1)


@functools.lru_cache(maxsize=64)
@normal_tensors
def flat_gather_indices(
    h: int,
    o: int,
    r: int,
    u: int,
    m: int,
    n: int,
    stride_a: int,
    stride_b: int,
    rotate: str | None = "rank",
    share: str = "hidden",
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices ``(idx_a, idx_b)`` such that A and B are one gather each from the compact tensors.

    ``A = cat([a0.flatten(), a_u.flatten()])[idx_a].view(r, h)`` and
    ``B = cat([b0.flatten(), b_u.flatten()])[idx_b].view(o, r)``. Built by running :func:`expand_a` and
    :func:`expand_b` on tensors holding element numbers, so they follow Eq. 4 for every Table 4 variant by
    construction. int64, r·(h + o) entries, cached per shape and device.
    """
    shape_a0, shape_b0 = chunk_shapes(h, o, r, u, m, n, share)
    n_a0, n_b0 = math.prod(shape_a0), math.prod(shape_b0)
    a0 = torch.arange(n_a0, device=device).view(shape_a0)
    a_u = n_a0 + torch.arange(u * h, device=device).view(u, h)
    b0 = torch.arange(n_b0, device=device).view(shape_b0)
    b_u = n_b0 + torch.arange(o * u, device=device).view(o, u)
    idx_a = expand_a(a0, a_u, h, r, m, stride_a, rotate, share).flatten()
    idx_b = expand_b(b0, b_u, o, r, n, stride_b, rotate, share).flatten()
    return idx_a, idx_b


def lora_scaling(lora_alpha: float, r: int, use_rslora: bool = False) -> float:
    """The factor ΔW = factor · B · A: ``lora_alpha / r`` (LoRA, the paper Section 4) or, with ``use_rslora``,
    ``lora_alpha / √r`` (rank-stabilised LoRA, Kalajdzievski 2023; PEFT's ``LoraConfig.use_rslora``).

    rsLoRA keeps the update's scale stable as r grows at a fixed ``lora_alpha``; with the paper's α/r a
    PRoLoRA of rank 8 is scaled 4× less than a LoRA of rank 2 at the same α.
    """
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def delta_weight(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``ΔW = scaling · B · A`` (Eq. 1 with LoRA's ``scaling = lora_alpha / r``), shape (o, h)."""
    return (b @ a) * scaling


def rectified_bound(h: int) -> float:
    """Bound of Eq. 5 for A_0 and A_u: LoRA's Kaiming-uniform bound with ``a = √5`` and fan-in ``h``.

    ``g·√(3/h)`` with ``g = √(2/(1+a²)) = √(1/3)`` gives ``1/√h``: the full input size h of the module,
    not the chunk width, so A_0 and A_u share one bound (the "rectified" initialisation).
    """
    return 1.0 / math.sqrt(h)


def chunked_adapter_forward(
    x: torch.Tensor,
    a0: torch.Tensor,
    b0: torch.Tensor,
    h: int,
    o: int,
    m: int,
    n: int,
    idx_a: torch.Tensor,
    idx_b: torch.Tensor,
) -> torch.Tensor:
    """``x · A_sharedᵀ · B_sharedᵀ`` computed from the chunks, without forming A or B (default sharing).

    Cutting x (…, h) into m chunks x_i of width c = ceil(h/m) (zero-padded), ``x_i · Roll(A_0, k)ᵀ =
    Roll(x_i · A_0ᵀ, k)`` along the rank, so the A side is one matmul with A_0 followed by a roll-and-sum;
    for B, ``z · Roll(B_0, k)ᵀ = Roll(z, −k) · B_0ᵀ``, so each output chunk is one matmul of a rolled z.
    FLOPs equal LoRA's at the same rank. ``idx_a`` / ``idx_b`` are the flat roll indices from
    :func:`roll_indices`. Returns (…, o); the result equals ``x @ expand_a(...)[:R].T @ expand_b(...)[:, :R].T``.
    """
    shared = a0.shape[0]
    width = a0.shape[1]
    pad = m * width - h
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    z = x.unflatten(-1, (m, width)) @ a0.t()  # (…, m, R): x_i · A_0ᵀ
    z = z.flatten(-2).index_select(-1, idx_a).unflatten(-1, (m, shared)).sum(-2)  # Σ_i Roll(·, i·s_A)
    zb = z.index_select(-1, idx_b).unflatten(-1, (n, shared))  # (…, n, R): Roll(z, −j·s_B)
    y = (zb @ b0.t()).flatten(-2)  # (…, n·ceil(o/n))
    return y[..., :o] if y.shape[-1] != o else y


def roll_mix_matrix(
    shared: int, m: int, n: int, stride_a: int, stride_b: int, rotate: bool, scaling: float = 1.0
) -> torch.Tensor:
    """The linear map between the two matmuls of :func:`chunked_adapter_forward` as one (m·R, n·R) matrix.

    The A side's chunk outputs z_i = x_i · A_0ᵀ, flattened (…, m·R), go to the B side's rolled copies
    ``[Roll(z, −j·s_B)]_j`` (…, n·R) with ``z = Σ_i Roll(z_i, i·s_A)`` (Eq. 3): a gather, a sum and a gather,
    all linear, so ``zb = z_flat @ M`` with M a 0/1 matrix (times ``scaling``). One small matmul instead of
    three indexing ops per call (batched serving of many adapters: fewer, larger ops).
    """
    idx_a = roll_indices(shared, m, stride_a, rotate, +1)
    idx_b = roll_indices(shared, n, stride_b, rotate, -1)
    p = torch.zeros(m * shared, shared)  # z_flat → z: p[idx_a[j], j mod R] = 1
    p[idx_a, torch.arange(m * shared) % shared] = 1.0
    q = torch.zeros(shared, n * shared)  # z → zb: q[idx_b[j], j] = 1
    q[idx_b, torch.arange(n * shared)] = 1.0
    return (p @ q) * scaling


def roll_indices(shared: int, copies: int, stride: int, rotate: bool, sign: int, device=None) -> torch.Tensor:
    """Flat gather indices for :func:`chunked_adapter_forward`.

    For copy i and rank position j the index is ``i·R·(sign>0) + (j − sign·i·s) mod R`` — ``sign=+1``
    gathers ``Roll(z_i, i·s)`` from the (m·R) flattened chunk outputs (A side); ``sign=-1`` gathers
    ``Roll(z, −i·s)`` from one length-R vector (B side). ``rotate=False`` uses stride 0 (CLoRA).
    """
    s = stride if rotate else 0
    i = torch.arange(copies, device=device).unsqueeze(1)
    j = torch.arange(shared, device=device).unsqueeze(0)
    idx = (j - sign * i * s) % max(shared, 1)
    if sign > 0:
        idx = idx + i * shared
    return idx.flatten()
