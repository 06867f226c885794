"""Modules that see the batch flattened to (batch·seq, h) rows: OPT's ``fc1``/``fc2``.

Before: ``forward(..., adapter_names=[...])`` raised on them (one name per batch row, but batch·seq input
rows), as peft 0.21.2's own ``test_mixed_adapter_batches`` on tiny OPT showed; the rows are batch-major, so
each name now covers its row's ``seq`` consecutive rows. The serving bank takes such modules too.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_opt
from test_tuner import _randomise

from prolora import PRoLoRAConfig, get_prolora_model
from prolora.inference.adapter_bank import AdapterBank
from prolora.tuner.layer import rows_of

TARGETS = ["q_proj", "v_proj", "fc1", "fc2"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt")
    model = get_prolora_model(
        make_tiny_opt(),
        PRoLoRAConfig(r=4, unshared_r=1, sharing_rate_a=3, sharing_rate_b=5, target_modules=TARGETS),
    )
    model.add_adapter(
        "b", PRoLoRAConfig(r=6, unshared_r=2, sharing_rate_a=4, sharing_rate_b=2, target_modules=TARGETS)
    )
    _randomise(model, seed=4)
    model.eval()
    model.save_pretrained(root)
    return model, root


def test_rows_of_repeats_names_over_batch_major_rows_or_refuses():
    assert rows_of(["a", "b"], 2) == ["a", "b"]
    assert rows_of(["a", "b"], 6) == ["a", "a", "a", "b", "b", "b"]
    with pytest.raises(ValueError, match="2 entries for a batch of 5 rows"):
        rows_of(["a", "b"], 5)


def test_mixed_batch_on_opt_equals_each_adapter_alone(two_adapters):
    model, _ = two_adapters
    ids = torch.randint(0, 128, (3, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mixed = model(ids, adapter_names=["default", "b", "__base__"]).logits
        model.set_adapter("default")
        alone_default = model(ids[:1]).logits[0]
        model.set_adapter("b")
        alone_b = model(ids[1:2]).logits[0]
        with model.disable_adapter():
            base = model(ids[2:]).logits[0]
    assert (alone_default - base).abs().max() > 1e-2 and (alone_b - base).abs().max() > 1e-2
    torch.testing.assert_close(mixed[0], alone_default, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[1], alone_b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[2], base, rtol=1e-4, atol=1e-4)
    generated = model.generate(
        ids, adapter_names=["b", "default", "b"], max_new_tokens=3, do_sample=False, pad_token_id=1
    )
    assert generated.shape == (3, 10)


def test_the_serving_bank_on_opt_equals_peft(two_adapters):
    model, root = two_adapters
    ids = torch.randint(0, 128, (3, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids, adapter_names=["b", "__base__", "default"]).logits
    base = make_tiny_opt()
    bank = AdapterBank(base)
    bank.load("default", root)
    bank.load("b", root / "b")
    with torch.no_grad(), bank.batch(["b", None, "default"]):
        served = base(ids).logits
    torch.testing.assert_close(served, expected, rtol=1e-4, atol=1e-4)
