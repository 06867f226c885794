"""Model-level behaviour: injection, forward/grad vs the dense reference, init, adapters API, merge."""

import pytest
import torch
from conftest import make_tiny_gpt2, make_tiny_llama
from reference import ref_delta, ref_params

import prolora
from prolora import PRoLoRAConfig, get_prolora_model
from prolora.tuner.model import prolora_modules

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _randomise(model, std=0.2, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "prolora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _tensors(layer, adapter="default"):
    """(A_0, B_0, A_u, B_u); a zero-element one (u = 0 or u = r) is not a parameter, served empty."""
    a0, a_u, b0, b_u = layer._compact(adapter)
    return a0, b0, a_u, b_u


def _reference_delta(layer, adapter="default"):
    spec = layer.prolora_spec[adapter]
    t = _tensors(layer, adapter)
    return ref_delta(
        *t,
        spec.h,
        spec.o,
        spec.r,
        spec.m,
        spec.n,
        spec.scaling * spec.r,
        spec.rotate,
        spec.share,
        spec.stride_a,
        spec.stride_b,
    )


def _config(**kw):
    kw.setdefault("target_modules", LLAMA_TARGETS)
    return PRoLoRAConfig(**{"r": 8, "unshared_r": 1, "sharing_rate_a": 5, "sharing_rate_b": 3, **kw})


def test_trainable_parameters_are_exactly_the_compact_tensors(tiny_llama):
    model = get_prolora_model(tiny_llama, _config())
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        any(t in n for t in ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")) for n in trainable
    )
    expected = sum(
        ref_params(layer.in_features, layer.out_features, 8, 1, 5, 3) for _, layer in prolora_modules(model)
    )
    assert sum(p.numel() for p in trainable.values()) == expected
    # GQA k/v: o = 16 for hidden 48 with 2 of 6 heads
    k = model.base_model.model.model.layers[0].self_attn.k_proj
    assert (k.in_features, k.out_features) == (48, 16)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"rotation": False},
        {"unshared_r": 0},
        {"unshared_r": 8},
        {"share": "rank"},
        {"rotate_dim": "hidden"},
        {"stride_a": 3, "stride_b": 2},
    ],
)
def test_forward_and_grads_match_dense_reference(tiny_llama, kw):
    # in float64, so that the difference is the method's and not the CPU's: float32 logits after two
    # layers differ by ~1e-5 between kernel paths (e.g. MKL's AVX2 vs AVX-512), more than a fixed 1e-5
    model = get_prolora_model(tiny_llama.double(), _config(**kw)).double()
    _randomise(model)
    model.train()
    x = torch.randint(0, 128, (2, 7))
    # dense reference: W0 + ΔW for every adapted module, computed by reference.py from the same tensors
    ref_model = make_tiny_llama().double()
    with torch.no_grad():
        for name, layer in prolora_modules(model):
            target = ref_model.get_submodule(name.removeprefix("base_model.model."))
            target.weight += _reference_delta(layer)
    out = model(x, labels=x)
    ref = ref_model(x, labels=x)
    assert out.logits.dtype == torch.float64
    torch.testing.assert_close(out.logits, ref.logits)  # float64's default tolerances
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0 or p.numel() == 0, name
        else:
            assert p.grad is None, name


def test_gradient_of_chunk_matches_reference():
    """∂loss/∂A_0 through the layer equals autograd through the reference expansion."""
    model = get_prolora_model(make_tiny_llama(), _config(lora_dropout=0.0))
    _randomise(model)
    layer = dict(prolora_modules(model))["base_model.model.model.layers.0.mlp.down_proj"].double()
    x = torch.randn(3, layer.in_features, dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    leaves = [
        getattr(layer, n)["default"].detach().clone().requires_grad_()
        for n in ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")
    ]
    spec = layer.prolora_spec["default"]
    dw = ref_delta(*leaves, spec.h, spec.o, spec.r, spec.m, spec.n, 16)
    (x @ (layer.base_layer.weight + dw).T).pow(2).sum().backward()
    for name, leaf in zip(("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u"), leaves, strict=False):
        torch.testing.assert_close(getattr(layer, name)["default"].grad, leaf.grad, rtol=1e-10, atol=1e-12)


VARIANTS = [
    {},
    {"rotation": False},
    {"unshared_r": 0},
    {"unshared_r": 8},
    {"share": "rank"},
    {"rotate_dim": "hidden"},
    {"share": "rank", "rotate_dim": "hidden"},
    {"stride_a": 3, "stride_b": 2},
]


@pytest.mark.parametrize("lean", [True, False], ids=["lean-backward", "plain-autograd"])
@pytest.mark.parametrize("kw", VARIANTS)
def test_layer_grads_match_reference_every_variant(kw, lean):
    """Both training paths (the lean autograd function and plain autograd over the gathers) give the
    reference's ∂/∂(A_0, B_0, A_u, B_u) and ∂/∂x, for every sharing/rotation variant, in float64."""
    model = get_prolora_model(make_tiny_llama(), _config(lora_dropout=0.0, **kw))
    _randomise(model)
    model.base_model.set_lean_backward(lean)
    layer = dict(prolora_modules(model))["base_model.model.model.layers.0.mlp.down_proj"].double()
    names = ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")
    x = torch.randn(2, 3, layer.in_features, dtype=torch.float64, requires_grad=True)
    layer(x).pow(2).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    leaves = [t.detach().clone().requires_grad_() for t in _tensors(layer)]
    spec = layer.prolora_spec["default"]
    dw = ref_delta(
        *leaves,
        spec.h,
        spec.o,
        spec.r,
        spec.m,
        spec.n,
        spec.scaling * spec.r,
        spec.rotate,
        spec.share,
        spec.stride_a,
        spec.stride_b,
    )
    (x_ref @ (layer.base_layer.weight + dw).T).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for name, leaf in zip(names, leaves, strict=False):
        if leaf.numel() == 0:  # u = 0 or u = r: not a parameter at all
            assert "default" not in getattr(layer, name)
            continue
        torch.testing.assert_close(getattr(layer, name)["default"].grad, leaf.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lean", [True, False])
def test_lean_backward_saves_no_expanded_factor(lean):
    """The lean path keeps only x, the rank-r activation and the compact tensors for backward; plain
    autograd also keeps the expanded A (r, h) and B (o, r), r·(h + o) extra floats per module."""
    model = get_prolora_model(make_tiny_llama(), _config(lora_dropout=0.0))
    model.base_model.set_lean_backward(lean)
    layer = dict(prolora_modules(model))["base_model.model.model.layers.0.mlp.down_proj"]
    spec = layer.prolora_spec["default"]
    x = torch.randn(5, layer.in_features, requires_grad=True)  # as inside a model: ∂/∂x is needed
    saved = []  # element counts of the floating-point tensors autograd keeps (indices aside)
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.numel()) or t if t.is_floating_point() else t, lambda t: t
    ):
        layer._adapter_output(x, "default").sum().backward()
    compact = sum(
        getattr(layer, n)["default"].numel()
        for n in ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")
    )
    activations = 5 * (spec.h + spec.r)
    # lean: x, x·Aᵀ and the compact tensors; plain autograd: x, x·Aᵀ and the expanded A and B
    assert sum(saved) == activations + (compact if lean else spec.r * (spec.h + spec.o)), saved
    assert compact < spec.r * (spec.h + spec.o)


def test_dropout_inside_the_lean_path_matches_the_reference_and_keeps_a_byte_mask():
    """Dropout in training runs inside the lean autograd function from a boolean mask: output and gradients
    equal the dense reference on x·keep/(1−p) (the mask drawn from the same seed), and backward keeps x, the
    mask (1 byte per element) and the rank-r activation, no dropped copy of x."""
    p = 0.3
    model = get_prolora_model(make_tiny_llama(), _config(lora_dropout=p))
    _randomise(model)
    model.train()
    layer = dict(prolora_modules(model))["base_model.model.model.layers.0.self_attn.q_proj"].double()
    names = ("prolora_A0", "prolora_B0", "prolora_A_u", "prolora_B_u")
    x = torch.randn(2, 3, layer.in_features, dtype=torch.float64, requires_grad=True)
    saved = []
    torch.manual_seed(7)
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t
    ):
        out = layer._adapter_output(x, "default")
    out.pow(2).sum().backward()
    torch.manual_seed(7)
    keep = torch.empty(x.shape, dtype=torch.bool).bernoulli_(1 - p)
    assert 0 < keep.sum() < keep.numel()
    x_ref = x.detach().clone().requires_grad_()
    leaves = [getattr(layer, n)["default"].detach().clone().requires_grad_() for n in names]
    spec = layer.prolora_spec["default"]
    dw = ref_delta(
        *leaves,
        spec.h,
        spec.o,
        spec.r,
        spec.m,
        spec.n,
        spec.scaling * spec.r,
        spec.rotate,
        spec.share,
        spec.stride_a,
        spec.stride_b,
    )
    ref = (x_ref * keep / (1 - p)) @ dw.T
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    ref.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for name, leaf in zip(names, leaves, strict=False):
        torch.testing.assert_close(getattr(layer, name)["default"].grad, leaf.grad, rtol=1e-10, atol=1e-12)
    compact = sum(getattr(layer, n)["default"].numel() for n in names)
    assert saved[:3] == [(torch.float64, x.numel()), (torch.bool, x.numel()), (torch.float64, 6 * spec.r)], (
        saved
    )
    assert sum(n for _, n in saved[3:]) == compact, saved


def test_lean_backward_under_bf16_autocast_matches_plain_autograd():
    """Mixed precision (the trainer's bf16 on GPUs): the lean path's backward runs under the forward's
    autocast state, gives float32 chunk gradients, and agrees with plain autograd to bf16 precision."""
    grads = {}
    for lean in (True, False):
        model = get_prolora_model(make_tiny_llama(), _config(lora_dropout=0.0))
        _randomise(model)
        model.base_model.set_lean_backward(lean)
        x = torch.randint(0, 128, (2, 7))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, labels=x).loss.backward()
        grads[lean] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[True].items():
        assert grad.dtype == torch.float32, name
        torch.testing.assert_close(grad, grads[False][name], rtol=5e-2, atol=5e-3)


def test_initialisation_bounds_rectified_and_vanilla():
    """Eq. 5: A_0 and A_u ~ U(±1/√h); "vanilla" (PRoLoRA^-i) uses A_0's own width; B = 0."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3000, 64)
    for init in ("rectified", "vanilla"):
        model = get_prolora_model(
            torch.nn.Sequential(layer),
            PRoLoRAConfig(
                r=64, unshared_r=16, sharing_rate_a=6, sharing_rate_b=2, target_modules=["0"], init=init
            ),
        )
        ((_, lay),) = prolora_modules(model)
        a0, a_u = lay.prolora_A0["default"].detach(), lay.prolora_A_u["default"].detach()
        bound0 = 1 / 3000**0.5 if init == "rectified" else 1 / 500**0.5
        for t, bound in ((a0, bound0), (a_u, 1 / 3000**0.5)):
            assert t.abs().max() <= bound
            assert t.abs().max() > 0.99 * bound
            assert abs(t.var().item() - bound**2 / 3) < 0.03 * bound**2  # U(-b, b) has variance b²/3
            assert abs(t.mean().item()) < 0.01 * bound
        assert lay.prolora_B0["default"].abs().sum() == 0 and lay.prolora_B_u["default"].abs().sum() == 0
        model.unload()


def test_new_adapter_starts_as_identity(tiny_llama):
    x = torch.randint(0, 128, (2, 7))
    base = tiny_llama(x).logits
    model = get_prolora_model(tiny_llama, _config())
    assert torch.equal(model(x).logits, base)


def test_dropout_off_in_eval_even_when_wrapped_in_eval_mode():
    model = make_tiny_llama().eval()  # already in eval mode when wrapped
    pm = get_prolora_model(model, _config(lora_dropout=0.5))
    _randomise(pm)
    x = torch.randint(0, 128, (2, 7))
    assert torch.equal(pm(x).logits, pm(x).logits)
    pm.train()
    assert not torch.equal(pm(x).logits, pm(x).logits)
    pm.eval()
    assert torch.equal(pm(x).logits, pm(x).logits)


def test_gradient_checkpointing_gives_nonzero_adapter_grads():
    model = make_tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()
    pm = get_prolora_model(model, _config())
    _randomise(pm)
    pm.train()
    x = torch.randint(0, 128, (2, 7))
    pm(x, labels=x).loss.backward()
    grads = [p.grad for n, p in pm.named_parameters() if "prolora_A0" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_merge_unmerge_and_merge_and_unload(tiny_llama):
    pm = get_prolora_model(tiny_llama, _config())
    _randomise(pm)
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    y = pm(x).logits
    pm.merge_adapter()
    torch.testing.assert_close(pm(x).logits, y, rtol=1e-5, atol=1e-5)
    pm.unmerge_adapter()
    torch.testing.assert_close(pm(x).logits, y, rtol=1e-5, atol=1e-5)
    merged = pm.merge_and_unload()
    assert not any(isinstance(m, prolora.PRoLoRALayer) for m in merged.modules())
    torch.testing.assert_close(merged(x).logits, y, rtol=1e-5, atol=1e-5)


def test_unload_restores_base():
    model = make_tiny_llama()
    x = torch.randint(0, 128, (2, 7))
    base = model(x).logits
    pm = get_prolora_model(model, _config())
    _randomise(pm)
    restored = pm.unload()
    assert torch.equal(restored(x).logits, base)


def test_gpt2_conv1d_forward_merge():
    model = make_tiny_gpt2()
    pm = get_prolora_model(
        model,
        PRoLoRAConfig(
            r=4, unshared_r=1, sharing_rate_a=3, sharing_rate_b=5, target_modules=["c_attn", "c_proj", "c_fc"]
        ),
    )
    _randomise(pm)
    pm.eval()
    assert pm.peft_config["default"].fan_in_fan_out
    layer = pm.base_model.model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 3, 48)
    w0 = layer.base_layer.weight.detach().T  # Conv1D stores (h, o)
    ref = x @ (w0 + _reference_delta(layer).float()).T + layer.base_layer.bias
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
    ids = torch.randint(0, 128, (2, 7))
    y = pm(ids).logits
    pm.merge_adapter()
    torch.testing.assert_close(pm(ids).logits, y, rtol=1e-5, atol=1e-5)


def test_multiple_adapters_set_disable_delete_and_mixed_batch(tiny_llama):
    pm = get_prolora_model(tiny_llama, _config(), adapter_name="a")
    pm.add_adapter("b", _config(r=4, unshared_r=0, sharing_rate_a=2, sharing_rate_b=2))
    _randomise(pm, seed=3)
    pm.eval()
    x = torch.randint(0, 128, (3, 7))
    with pm.disable_adapter():
        base = pm(x).logits
    pm.set_adapter("a")
    ya = pm(x).logits
    pm.set_adapter("b")
    yb = pm(x).logits
    assert not torch.allclose(ya, yb)
    mixed = pm(x, adapter_names=["a", "b", "__base__"]).logits
    torch.testing.assert_close(mixed[0], ya[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], yb[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[2], base[2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown adapter name"):
        pm(x, adapter_names=["a", "nope", "b"])
    pm.delete_adapter("b")
    assert all("b" not in layer.prolora_spec for _, layer in prolora_modules(pm))


def test_cache_invalidates_when_chunks_change(tiny_llama):
    pm = get_prolora_model(tiny_llama, _config())
    pm.eval()
    x = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        y0 = pm(x).logits
        _randomise(pm)  # in-place copy_ bumps the tensors' versions
        y1 = pm(x).logits
    assert not torch.allclose(y0, y1)
    pm.base_model.set_expanded_cache(False)  # compute from the chunks directly
    with torch.no_grad():
        torch.testing.assert_close(pm(x).logits, y1, rtol=1e-5, atol=1e-5)
    pm.base_model.set_expanded_cache(True)
    with torch.no_grad():
        pm(x)
        for _, layer in prolora_modules(pm):  # new Parameter objects (as load_state_dict(assign=True) makes)
            for name in ("prolora_A0", "prolora_B_u"):
                old = getattr(layer, name)["default"]
                getattr(layer, name)["default"] = torch.nn.Parameter(old.detach() * 0.5)
        y2 = pm(x).logits
        pm.base_model.set_expanded_cache(False)
        torch.testing.assert_close(y2, pm(x).logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y1, y2)


def test_per_module_overrides(tiny_llama):
    cfg = _config(overrides={"mlp\\..*": {"r": 4, "unshared_r": 2, "sharing_rate_a": 2}})
    pm = get_prolora_model(tiny_llama, cfg)
    specs = {n.rsplit(".", 1)[-1]: layer.prolora_spec["default"] for n, layer in prolora_modules(pm)}
    assert (specs["down_proj"].r, specs["down_proj"].u, specs["down_proj"].m) == (4, 2, 2)
    assert (specs["q_proj"].r, specs["q_proj"].u, specs["q_proj"].m) == (8, 1, 5)


def test_bf16_base_with_fp32_adapter():
    """Documented behaviour: the adapter computes in its own dtype (fp32), the output keeps the base's."""
    model = make_tiny_llama().to(torch.bfloat16)
    pm = get_prolora_model(model, _config())
    for n, p in pm.named_parameters():
        if "prolora_" in n:
            p.data = p.data.float()
    _randomise(pm)
    pm.eval()
    out = pm(torch.randint(0, 128, (2, 7))).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"unshared_r": 9}, "unshared_r=9 exceeds r=8"),
        ({"r": 0}, "r=0 is invalid"),
        ({"sharing_rate_a": 0}, "sharing_rate_a=0 is invalid"),
        ({"sharing_rate_b": 1.5}, "sharing_rate_b=1.5 is invalid"),
        ({"init": "kaiming"}, "init='kaiming'"),
        ({"share": "diagonal"}, "share='diagonal'"),
        ({"lora_dropout": 1.0}, "lora_dropout=1.0"),
        ({"overrides": {"q_proj": {"rank": 4}}}, "unknown keys"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _config(**kw)


def test_sharing_rate_larger_than_dimension_names_module(tiny_llama):
    with pytest.raises(ValueError, match=r"sharing_rate_b=20 for module .*k_proj exceeds .*o=16"):
        get_prolora_model(tiny_llama, _config(sharing_rate_b=20))


def test_adapter_names_needs_one_name_per_row(tiny_llama):
    pm = get_prolora_model(tiny_llama, _config())
    pm.eval()
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match="adapter_names has 2 entries for a batch of 1 rows"),
    ):
        pm(torch.randint(0, 128, (1, 5)), adapter_names=["default", "__base__"])
