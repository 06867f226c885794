"""PRoLoRA on the real embedded model (SmolLM2-135M-Instruct: Llama, hidden 576, GQA k/v 192)."""

import pytest
import torch

from prolora import PRoLoRAConfig, get_prolora_model
from prolora.equations import trainable_params

pytestmark = pytest.mark.slow

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_paper_budget_config_on_smollm2(smollm2, tmp_path):
    model, tok = smollm2
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (576, 1536, 30)
    kv = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    assert kv == 192
    pm = get_prolora_model(
        model, PRoLoRAConfig(r=8, unshared_r=1, sharing_rate_a=7, sharing_rate_b=7, target_modules=TARGETS)
    )
    try:
        shapes = [(576, 576), (576, kv), (576, kv), (576, 576), (576, 1536), (576, 1536), (1536, 576)]
        expected = 30 * sum(trainable_params(h, o, 8, 1, 7, 7) for h, o in shapes)
        trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
        assert trainable == expected == 612_510  # LoRA r=2 on the same model: 610,560
        ids = tok("<|user|>\nWhat is 2+3?\n<|assistant|>\n", return_tensors="pt").input_ids
        pm.eval()
        with torch.no_grad():
            with pm.disable_adapter():
                base = pm(ids).logits
            out = pm(ids).logits
        assert torch.equal(out, base)  # B = 0 at init: the new adapter is the identity
    finally:
        pm.unload()
