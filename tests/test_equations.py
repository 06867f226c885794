"""The pure equations (prolora.equations) against the independent dense reference."""

import pytest
import torch
from reference import ref_A, ref_B, ref_chunk_shapes, ref_params, ref_stride

from prolora import equations as eq

SHAPES = [  # (h, o, r, u, m, n): divisible, non-divisible, GQA k/v (576 -> 192), u = 0, u = r, m = h
    (48, 48, 8, 1, 4, 4),
    (50, 37, 6, 2, 7, 5),
    (576, 192, 8, 1, 7, 7),
    (1536, 576, 32, 4, 7, 7),
    (31, 17, 5, 0, 3, 2),
    (40, 24, 4, 4, 3, 3),
    (9, 9, 4, 0, 9, 4),
]
VARIANTS = [
    ("hidden", "rank"),
    ("hidden", None),
    ("hidden", "hidden"),
    ("rank", "rank"),
    ("rank", "hidden"),
    ("rank", None),
]


def _chunks(h, o, r, u, m, n, share="hidden", seed=0):
    g = torch.Generator().manual_seed(seed)
    sa, sb = ref_chunk_shapes(h, o, r, u, m, n, share)
    return (
        torch.randn(sa, generator=g, dtype=torch.float64),
        torch.randn(sb, generator=g, dtype=torch.float64),
        torch.randn(u, h, generator=g, dtype=torch.float64),
        torch.randn(o, u, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("h,o,r,u,m,n", SHAPES)
@pytest.mark.parametrize("share,rotate", VARIANTS)
def test_expand_matches_reference(h, o, r, u, m, n, share, rotate):
    assert eq.chunk_shapes(h, o, r, u, m, n, share) == ref_chunk_shapes(h, o, r, u, m, n, share)
    a0, b0, a_u, b_u = _chunks(h, o, r, u, m, n, share)
    s_a, s_b = ref_stride(r, u, m), ref_stride(r, u, n)
    A = eq.expand_a(a0, a_u, h, r, m, s_a, rotate, share)
    B = eq.expand_b(b0, b_u, o, r, n, s_b, rotate, share)
    assert A.shape == (r, h) and B.shape == (o, r)
    assert torch.equal(A, ref_A(a0, a_u, h, r, m, s_a, rotate, share))
    assert torch.equal(B, ref_B(b0, b_u, o, r, n, s_b, rotate, share))


def _shared_ranks_dense(h, o, r, u, m, n, rotate):
    """Random chunks, their strides, and the dense reference A, B of the R = r − u shared ranks."""
    a0, b0, a_u, b_u = _chunks(h, o, r, u, m, n)
    s_a, s_b = ref_stride(r, u, m), ref_stride(r, u, n)
    R = r - u
    rot = "rank" if rotate else None
    A = ref_A(a0, a_u, h, r, m, s_a, rot)[:R]
    B = ref_B(b0, b_u, o, r, n, s_b, rot)[:, :R]
    return a0, b0, s_a, s_b, R, A, B


@pytest.mark.parametrize("h,o,r,u,m,n", SHAPES)
@pytest.mark.parametrize("rotate", [True, False])
def test_chunked_forward_matches_dense(h, o, r, u, m, n, rotate):
    a0, b0, s_a, s_b, R, A, B = _shared_ranks_dense(h, o, r, u, m, n, rotate)
    x = torch.randn(3, 5, h, dtype=torch.float64)
    idx_a = eq.roll_indices(R, m, s_a, rotate, +1)
    idx_b = eq.roll_indices(R, n, s_b, rotate, -1)
    y = eq.chunked_adapter_forward(x, a0, b0, h, o, m, n, idx_a, idx_b)
    torch.testing.assert_close(y, x @ A.T @ B.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h,o,r,u,m,n", SHAPES)
@pytest.mark.parametrize("rotate", [True, False])
def test_the_roll_mix_matrix_between_the_two_chunk_matmuls_equals_dense_reference(h, o, r, u, m, n, rotate):
    """The serving bank's form: chunk outputs (x_i · A_0ᵀ) → mix matrix → B_0 equals x · A_sharedᵀ · B_sharedᵀ."""
    a0, b0, s_a, s_b, R, A, B = _shared_ranks_dense(h, o, r, u, m, n, rotate)
    x = torch.randn(3, 5, h, dtype=torch.float64)
    c = a0.shape[1]
    z = torch.nn.functional.pad(x, (0, m * c - h)).unflatten(-1, (m, c)) @ a0.t()  # (…, m, R)
    mix = eq.roll_mix_matrix(R, m, n, s_a, s_b, rotate, scaling=0.5).double()
    assert set(mix.unique().tolist()) <= {0.0, 0.5}
    zb = (z.flatten(-2) @ mix).unflatten(-1, (n, R))
    y = (zb @ b0.t()).flatten(-2)[..., :o]
    torch.testing.assert_close(y, 0.5 * x @ A.T @ B.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h,o,r,u,m,n", SHAPES)
def test_trainable_params_formula(h, o, r, u, m, n):
    sa, sb = eq.chunk_shapes(h, o, r, u, m, n)
    stored = sa[0] * sa[1] + sb[0] * sb[1] + u * (h + o)
    assert eq.trainable_params(h, o, r, u, m, n) == stored == ref_params(h, o, r, u, m, n)


def test_u_equals_r_is_lora():
    a0, b0, a_u, b_u = _chunks(30, 20, 4, 4, 3, 2)
    A = eq.expand_a(a0, a_u, 30, 4, 3, 1)
    B = eq.expand_b(b0, b_u, 20, 4, 2, 1)
    assert torch.equal(A, a_u) and torch.equal(B, b_u)
    assert eq.trainable_params(30, 20, 4, 4, 3, 2) == 4 * (30 + 20)


def _blocks(dw, m, n):
    o, h = dw.shape
    return [
        [dw[j * o // n : (j + 1) * o // n, i * h // m : (i + 1) * h // m] for i in range(m)] for j in range(n)
    ]


def test_clora_blocks_are_identical():
    """u = 0 without rotation (Eq. 2): ΔW is one block repeated m×n times (Figure 1b)."""
    a0, b0, a_u, b_u = _chunks(12, 9, 4, 0, 3, 3)
    dw = eq.expand_b(b0, b_u, 9, 4, 3, 1, None) @ eq.expand_a(a0, a_u, 12, 4, 3, 1, None)
    blocks = _blocks(dw, 3, 3)
    # equal up to rounding: a matmul kernel may sum the blocks' products in different orders (the CPU's
    # vector width decides), so compare with float32's default tolerances, not bit for bit
    for row in blocks:
        for b in row:
            torch.testing.assert_close(b, blocks[0][0])


def test_rolora_diagonal_pattern_and_partial_sharing_breaks_it():
    """u = 0 with rotation (Eq. 3): blocks differ, but block (j, i) equals block (j+1, i+1) when s_A = s_B
    (the inner product is invariant to rotating both factors; Section 3.1). Unshared ranks (Eq. 4) break it."""
    a0, b0, a_u, b_u = _chunks(12, 12, 6, 0, 3, 3)
    dw = eq.expand_b(b0, b_u, 12, 6, 3, 2) @ eq.expand_a(a0, a_u, 12, 6, 3, 2)
    blocks = _blocks(dw, 3, 3)
    assert not torch.allclose(blocks[0][0], blocks[0][1])
    torch.testing.assert_close(blocks[0][0], blocks[1][1])
    torch.testing.assert_close(blocks[0][1], blocks[1][2])
    a0, b0, a_u, b_u = _chunks(12, 12, 7, 1, 3, 3)
    dw = eq.expand_b(b0, b_u, 12, 7, 3, 2) @ eq.expand_a(a0, a_u, 12, 7, 3, 2)
    blocks = _blocks(dw, 3, 3)
    assert not torch.allclose(blocks[0][0], blocks[1][1])


def test_default_stride():
    assert eq.default_stride(8, 1, 7) == 1 and eq.default_stride(32, 4, 7) == 4
    assert eq.default_stride(4, 0, 2) == 2 and eq.default_stride(2, 0, 7) == 1


def test_rectified_bound_is_loras_kaiming_bound():
    w = torch.empty(4, 300)
    torch.nn.init.kaiming_uniform_(w, a=5**0.5)  # PEFT LoRA's default init of A
    assert w.abs().max() <= eq.rectified_bound(300)
    assert w.abs().max() > 0.95 * eq.rectified_bound(300)


def test_gradients_flow_to_chunks_like_reference():
    h, o, r, u, m, n = 50, 37, 6, 2, 7, 5
    leaves = [t.requires_grad_() for t in _chunks(h, o, r, u, m, n)]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    s_a, s_b = ref_stride(r, u, m), ref_stride(r, u, n)
    x = torch.randn(4, h, dtype=torch.float64)
    a0, b0, a_u, b_u = leaves
    (x @ eq.expand_a(a0, a_u, h, r, m, s_a).T @ eq.expand_b(b0, b_u, o, r, n, s_b).T).pow(2).sum().backward()
    ra0, rb0, ra_u, rb_u = ref_leaves
    (x @ ref_A(ra0, ra_u, h, r, m, s_a).T @ ref_B(rb0, rb_u, o, r, n, s_b).T).pow(2).sum().backward()
    for got, want in zip(leaves, ref_leaves, strict=False):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12)
