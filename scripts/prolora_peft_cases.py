"""PRoLoRA configurations run through peft's generic tuner tests (``scripts/peft_conformance.py``).

Each list has the shape of the peft test-module list it replaces. Custom-model cases use peft's ``MLP``
(lin0: 10 → 20, lin1: 20 → 2) and ``EmbConv1D`` (a transformers ``Conv1D`` 5 → 1); decoder cases use
tiny Llama / GPT-2 / OPT / Qwen2 models (hidden size 32, k/v 16 for Llama and Qwen2).
"""

import dataclasses

from prolora import PRoLoRAConfig

# init_weights=False (B random too, PEFT's test convention) exists since issue 16; dropped for older sources
# (scripts/peft_conformance.py --src) so that the same cases give the "before" counts
_HAS_INIT_WEIGHTS = "init_weights" in {f.name for f in dataclasses.fields(PRoLoRAConfig)}


def _kw(**kw):
    if not _HAS_INIT_WEIGHTS:
        kw.pop("init_weights", None)
    return kw


# (test name, model id, config class, config kwargs): test_custom_models.TEST_CASES
_MLP = [
    ("defaults lin0", {"target_modules": ["lin0"]}),
    ("lin0 lin1", {"target_modules": ["lin0", "lin1"], "sharing_rate_a": 2, "sharing_rate_b": 2}),
    ("regex str", {"target_modules": "lin0", "sharing_rate_a": 2, "sharing_rate_b": 2}),
    ("u=0 RoLoRA", {"target_modules": ["lin0"], "unshared_r": 0}),
    ("u=r LoRA", {"target_modules": ["lin0"], "unshared_r": 8}),
    ("no rotation", {"target_modules": ["lin0"], "rotation": False}),
    ("u=0 no rotation CLoRA", {"target_modules": ["lin0"], "unshared_r": 0, "rotation": False}),
    (
        "Table4 share rank",
        {"target_modules": ["lin0"], "share": "rank", "sharing_rate_a": 3, "sharing_rate_b": 3},
    ),
    ("Table4 rotate hidden", {"target_modules": ["lin0"], "rotate_dim": "hidden"}),
    ("init vanilla", {"target_modules": ["lin0"], "init": "vanilla"}),
    ("strides", {"target_modules": ["lin0"], "stride_a": 2, "stride_b": 3}),
    ("non-divisible m n", {"target_modules": ["lin0"], "sharing_rate_a": 3, "sharing_rate_b": 7}),
    (
        "overrides",
        {
            "target_modules": ["lin0", "lin1"],
            "sharing_rate_a": 3,
            "sharing_rate_b": 3,
            "overrides": {"lin1": {"r": 4, "unshared_r": 0, "sharing_rate_b": 2}},
        },
    ),
    ("modules_to_save", {"target_modules": ["lin0"], "modules_to_save": ["lin1"]}),
    ("dropout", {"target_modules": ["lin0"], "lora_dropout": 0.1}),
]
CUSTOM_TEST_CASES = [(f"Vanilla MLP PRoLoRA {name}", "MLP", PRoLoRAConfig, kw) for name, kw in _MLP] + [
    (
        "EmbConv1D PRoLoRA Conv1D",
        "EmbConv1D",
        PRoLoRAConfig,
        {"target_modules": ["conv1d"], "sharing_rate_a": 2, "sharing_rate_b": 1},
    ),
]

# (test name, tuner method, config class, kwargs 1, kwargs 2): MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES
MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = [
    (
        "PRoLoRA Same",
        "prolora",
        PRoLoRAConfig,
        _kw(target_modules=["lin0"], init_weights=False),
        _kw(target_modules=["lin0"], init_weights=False),
    ),
    (
        "PRoLoRA Different",
        "prolora",
        PRoLoRAConfig,
        _kw(target_modules=["lin0"], init_weights=False),
        _kw(target_modules=["lin1"], sharing_rate_b=2, init_weights=False),
    ),
]

# (test name, config 0, config 1): MIXED_ADAPTER_TEST_CASES
MIXED_ADAPTER_TEST_CASES = [
    (
        "PRoLoRA mixed adapter",
        PRoLoRAConfig(**_kw(target_modules=["lin0"], init_weights=False)),
        PRoLoRAConfig(**_kw(target_modules=["lin0"], r=16, unshared_r=0, init_weights=False)),
    ),
]

# decoder models (hub ids; served by the harness from local tiny random models)
DECODER_MODELS = [
    "trl-internal-testing/tiny-random-LlamaForCausalLM",
    "peft-internal-testing/tiny-random-GPT2LMHeadModel",
    "peft-internal-testing/tiny-random-OPTForCausalLM",
    "peft-internal-testing/tiny-dummy-qwen2",
]

_CAUSAL = {"task_type": "CAUSAL_LM"}
DECODER_CONFIGS = [
    (PRoLoRAConfig, {**_CAUSAL, "target_modules": None}),
    (PRoLoRAConfig, {**_CAUSAL, "target_modules": "all-linear", "sharing_rate_a": 4, "sharing_rate_b": 4}),
    (PRoLoRAConfig, {**_CAUSAL, "target_modules": None, "unshared_r": 0}),
    (PRoLoRAConfig, {**_CAUSAL, "target_modules": None, "unshared_r": 8}),
    (PRoLoRAConfig, {**_CAUSAL, "target_modules": None, "rotation": False}),
    (
        PRoLoRAConfig,
        {
            **_CAUSAL,
            "target_modules": None,
            "share": "rank",
            "rotate_dim": "hidden",
            "sharing_rate_a": 3,
            "sharing_rate_b": 3,
        },
    ),
    (
        PRoLoRAConfig,
        {
            **_CAUSAL,
            "target_modules": None,
            "sharing_rate_a": 5,
            "sharing_rate_b": 3,
            "overrides": {"v_proj": {"r": 4, "unshared_r": 2}, "c_attn": {"r": 4, "unshared_r": 2}},
        },
    ),
]

# (config class, mandatory kwargs): test_config.ALL_CONFIG_CLASSES
CONFIG_CLASSES = ((PRoLoRAConfig, {}),)
