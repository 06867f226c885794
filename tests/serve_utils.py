"""Helpers of the serving tests: a tiny Llama over a byte-level tokenizer, random adapters, a live server."""

from __future__ import annotations

import socket
import threading
import time

import torch
from test_eval_cli import make_tiny_model
from test_tuner import LLAMA_TARGETS, _randomise

from prolora import PRoLoRAConfig, get_prolora_model


def save_model(root):
    """The tiny model and its tokenizer saved in ``root`` (a directory ``--model`` accepts)."""
    model, tokenizer = make_tiny_model()
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def save_prolora(path, seed: int, **kw):
    """A PRoLoRA adapter on the tiny model with random (non-zero) compact tensors."""
    config = {"r": 8, "unshared_r": 1, "sharing_rate_a": 4, "sharing_rate_b": 2, **kw}
    pm = get_prolora_model(make_tiny_model()[0], PRoLoRAConfig(target_modules=LLAMA_TARGETS, **config))
    _randomise(pm, std=0.6, seed=seed)
    pm.save_pretrained(path)
    return path


def save_lora(path, seed: int):
    """A dense PEFT LoRA adapter (r=4 on q/v) with random weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    model = get_peft_model(make_tiny_model()[0], config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.6)
    model.save_pretrained(path)
    return path


def hf_greedy(adapter_path, prompt_ids: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """A request alone on the tiny model: Hugging Face ``generate`` (greedy, on a PeftModel when
    ``adapter_path`` is set); its new tokens and the logits of each step."""
    from peft import PeftModel

    model = make_tiny_model()[0]
    eos = model.config.eos_token_id
    if adapter_path is not None:
        model = PeftModel.from_pretrained(model, str(adapter_path))
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=eos,
        eos_token_id=eos,
        output_scores=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, ids.shape[1] :].tolist(), [s[0] for s in out.scores]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a background thread; ``stop()`` shuts it down."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=5
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
