"""A base model with saved adapters, answering conversations (greedy by default).

Adapters are given as run directories of ``prolora train`` (their ``adapter/`` subdirectory is used, and
their ``run_config.json`` supplies the base model and chat format) or as plain PEFT adapter directories,
optionally named: ``NAME=PATH``. Several adapters load side by side into one ``PeftModel`` and one is
active at a time (:meth:`Generator.use`); ``None`` means the base model alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass

from prolora.base_models import load_base_model
from prolora.format import ADAPTER_DIR, CONFIG_NAME, adapter_dir, holds_adapter, read_adapter
from prolora.tuner.saved import check_adapter_name


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter to load: its name, its PEFT directory, and the run's config when it came from a run."""

    name: str
    path: str
    run_config: dict

    @classmethod
    def parse(cls, spec: str) -> AdapterSpec:
        """``[NAME=]PATH`` where PATH is a run directory or an adapter directory (NAME: the run's folder name).

        Raises:
            FileNotFoundError: PATH holds neither ``adapter_config.json`` nor ``adapter/adapter_config.json``.
            ValueError: NAME breaks the one name rule (:func:`prolora.tuner.saved.check_adapter_name`).
        """
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        path = os.path.normpath(path)
        folder = str(adapter_dir(path))
        if not holds_adapter(path):
            raise FileNotFoundError(
                f"{spec!r}: no {CONFIG_NAME} in {path} or {os.path.join(path, ADAPTER_DIR)}; "
                "pass a run directory of `prolora train` or a PEFT adapter directory"
            )
        run_config = {}
        if folder != path:  # a run directory: its run_config.json names the base model and chat format
            with open(os.path.join(path, "run_config.json"), encoding="utf-8") as f:
                run_config = json.load(f)
        name = name or os.path.basename(path)
        check_adapter_name(name)
        return cls(name, folder, run_config)


@dataclass
class Reply:
    text: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


class Generator:
    """A base model with zero or more named adapters; renders conversations in the adapters' training chat
    format (``chat_format``), and for the base model alone in ``base_format``: the one given, else
    :func:`prolora.data.chat.base_chat_format` (the tokenizer's template if it has one, as ``prolora
    serve``)."""

    def __init__(
        self,
        model_name: str | None,
        adapters: list[AdapterSpec],
        chat_format: str = "tulu",
        base_format: str | None = None,
    ):
        from peft import PeftModel

        import prolora.baselines  # noqa: F401  (registers Tied-LoRA with PEFT)
        from prolora.base_models import load_tokenizer
        from prolora.tuner import register

        register()  # PRoLoRA adapters load through stock PEFT (import prolora does the same)

        from prolora.data.chat import base_chat_format

        self.tokenizer = load_tokenizer(model_name)
        self.chat_format = chat_format
        self.base_format = base_format or base_chat_format(self.tokenizer)
        model = load_base_model(model_name, "none")
        for spec in adapters:  # the one reader's checks, with its messages, before peft loads anything
            read_adapter(spec.path, others=True, name=spec.name, types=None)
        if adapters:
            first, *rest = adapters
            model = PeftModel.from_pretrained(model, first.path, adapter_name=first.name)
            for spec in rest:
                model.load_adapter(spec.path, adapter_name=spec.name)
        self.model = model.eval()
        self.adapters = [spec.name for spec in adapters]
        self.active = self.adapters[0] if adapters else None

    def use(self, name: str | None) -> None:
        """Activate adapter ``name``; ``None`` for the base model alone.

        Raises:
            ValueError: an unknown name, listing the loaded ones.
        """
        if name is not None and name not in self.adapters:
            raise ValueError(f"no adapter named {name!r}; loaded: {', '.join(self.adapters) or 'none'}")
        if name is not None:
            self.model.set_adapter(name)
        self.active = name

    def reply(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0) -> Reply:
        """Continue ``messages`` with an assistant turn; greedy when ``temperature`` is 0."""
        import torch

        from prolora.data.chat import render

        chat_format = self.chat_format if self.active is not None else self.base_format
        text, _ = render(self.tokenizer, messages, chat_format, add_generation_prompt=True)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=chat_format == "tulu")
        sampling = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        base_only = (
            self.model.disable_adapter()
            if self.active is None and self.adapters
            else contextlib.nullcontext()
        )
        started = time.perf_counter()
        with torch.inference_mode(), base_only:
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **sampling,
            )
        seconds = time.perf_counter() - started
        new = out[0, inputs["input_ids"].shape[1] :]
        return Reply(self.tokenizer.decode(new, skip_special_tokens=True).strip(), len(new), seconds)


def resolve_adapters(
    model: str | None, adapter_specs: list[str], chat_format: str | None
) -> tuple[list[AdapterSpec], str | None, str]:
    """Parse ``[NAME=]PATH`` adapter specs; the base model and chat format default to the first run's config.

    Returns ``(specs, model, chat_format)``; ``model`` stays ``None`` when neither the caller nor a run names
    one (the embedded default).

    Raises:
        ValueError: repeated adapter names, or adapters from runs on different base models or chat formats
            without an explicit choice.
    """
    specs = [AdapterSpec.parse(s) for s in adapter_specs]
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"adapter names {names} repeat; name them with NAME=PATH")
    configs = [s.run_config for s in specs if s.run_config]
    if model is None and len({c.get("model") for c in configs}) > 1:
        raise ValueError("the adapters were trained on different base models; pass --model")
    if chat_format is None and len({c.get("chat_format") for c in configs}) > 1:
        raise ValueError("the adapters were trained with different chat formats; pass --chat-format")
    model = model or next((c["model"] for c in configs if c.get("model")), None)
    chat_format = chat_format or (configs[0].get("chat_format") if configs else None) or "tulu"
    return specs, model, chat_format


def load_generator(model: str | None, adapter_specs: list[str], chat_format: str | None) -> Generator:
    """Build a :class:`Generator` over :func:`resolve_adapters`' choices; a ``chat_format`` given applies to
    the base model too (else the base model's default, :func:`prolora.data.chat.base_chat_format`).

    Raises:
        ValueError: as :func:`resolve_adapters`.
    """
    specs, model, adapters_format = resolve_adapters(model, adapter_specs, chat_format)
    return Generator(model, specs, adapters_format, chat_format)
