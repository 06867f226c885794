"""``train(config)``: finetune a causal LM with an adapter on instruction data; write the run's outputs.

Outputs in the run directory (``config.output_dir``):

===================  ===============================================================================
``adapter/``         the adapter, ``PeftModel.save_pretrained`` (load: ``PeftModel.from_pretrained``)
``run_config.json``  the resolved :class:`~prolora.train.config.TrainConfig` and derived settings
``train_log.jsonl``  one line per logging step: step, loss, learning_rate, grad_norm, tokens/s, ...
``summary.json``     the final summary (see :func:`train`), also printed
``checkpoint-N/``    the newest checkpoints (for ``--resume``), written atomically
``data_issues.txt``  skipped and truncated records with their origin, when there are any
===================  ===============================================================================

The flow is the paper's finetuning setup (Appendix A.2) on the Hugging Face Trainer; held-out losses of
the base model (adapter disabled) and of the adapter are computed after training, so that nothing runs a
forward pass before training (with a 4-bit base on CPU, an eval-mode forward before training repacks the
weights and silently stops gradients through most layers).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

from prolora.base_models import DEFAULT_MODEL, load_base_model, model_file, model_name, resolve_quantization
from prolora.files import write_json
from prolora.method_presets import PROLORA_METHODS
from prolora.threads import set_threads

from .config import DEFAULT_MAX_STEPS, DEFAULT_STEPS_REASON, TrainConfig, default_output_dir

# Examples per forward pass of the held-out loss. The loss is token-weighted over the whole split, so this sets
# memory and speed only, not the number.
HELDOUT_BATCH_SIZE = 4


def is_main_process() -> bool:
    """True on the process that prints and writes files (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(*lines: str) -> None:
    """Print ``lines`` on the main process only."""
    if is_main_process():
        print(*lines, sep="\n", flush=True)


@contextlib.contextmanager
def _removed_on_error(output_dir: str, remove: bool):
    """Delete ``output_dir`` (created for this run, holding only its plan files) if the block raises."""
    try:
        yield
    except BaseException:
        if remove:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def prepare_output_dir(config: TrainConfig, world_size: int) -> tuple[str, str | None]:
    """Return ``(output_dir, checkpoint to resume from or None)``; create the directory.

    Raises:
        ValueError: no ``--output-dir`` under distributed training or with ``--resume``.
        FileNotFoundError: ``--resume`` without a checkpoint in the directory.
        FileExistsError: the directory already holds checkpoints and ``--resume`` is not given.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = config.output_dir
    if out is None:
        if config.resume:
            raise ValueError("--resume needs --output-dir DIR, the run directory to continue")
        if world_size > 1:
            raise ValueError(
                "under torchrun or accelerate launch, pass --output-dir so that every process "
                "writes to the same run directory"
            )
        out = default_output_dir(config.method, time.strftime("%Y%m%d-%H%M%S"))
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--output-dir {out} is an existing file; give a directory path")
    checkpoint = get_last_checkpoint(out) if os.path.isdir(out) else None
    if config.resume and checkpoint is None:
        raise FileNotFoundError(
            f"--resume: no checkpoint-N directory in {out}; run without --resume to start"
        )
    if not config.resume and checkpoint is not None:
        raise FileExistsError(
            f"{out} already holds {os.path.basename(checkpoint)}; pass --resume to continue "
            "that run, or choose another --output-dir"
        )
    if checkpoint is not None:
        _check_same_settings(config, out)
    os.makedirs(out, exist_ok=True)
    return out, checkpoint


# settings that may differ when a run is resumed: where and how often it writes, and the CPU threads
_RESUMABLE_CHANGES = {"resume", "output_dir", "threads", "logging_steps", "save_steps", "save_total_limit"}


def _check_same_settings(config: TrainConfig, out: str) -> None:
    """``--resume`` continues the run recorded in ``out/run_config.json``: any other training setting (steps,
    learning rate, data, adapter...) would silently give a different run, so it is refused, naming each.

    Raises:
        ValueError: the settings differ from the recorded run's.
    """
    import json

    path = os.path.join(out, "run_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f)
    now = json.loads(json.dumps(config.to_dict()))  # lists and numbers as the recorded JSON has them
    changed = [
        f"{name} {recorded[name]!r} (the run) vs {value!r} (now)"
        for name, value in now.items()
        if name in recorded and name not in _RESUMABLE_CHANGES and recorded[name] != value
    ]
    if changed:
        raise ValueError(
            f"--resume continues the run in {out} with its own settings, but these differ: "
            f"{'; '.join(changed)}. Pass the run's values (its run_config.json), or start a new "
            "run with another --output-dir"
        )


def training_arguments(config: TrainConfig, output_dir: str, world_size: int, quantization: str):
    """``TrainingArguments`` of Appendix A.2 (transformers' names: ``train_sampling_strategy`` replaces
    ``group_by_length``; a float ``warmup_steps`` < 1 is a ratio; 5.23 renames ``gradient_checkpointing``
    to ``activation_checkpointing``, keeping the old name as a deprecated alias, and earlier releases in
    prolora's range know only the old one)."""
    import dataclasses

    import torch
    from transformers import TrainingArguments

    fields = {field.name for field in dataclasses.fields(TrainingArguments)}
    checkpointing = (
        "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    )

    per_step = config.micro_batch_size * world_size
    if config.batch_size % per_step:
        raise ValueError(
            f"batch_size={config.batch_size} is not a multiple of micro_batch_size × processes = "
            f"{config.micro_batch_size} × {world_size}; change --batch-size or --micro-batch-size"
        )
    cuda = torch.cuda.is_available()
    optim = config.optim
    if optim == "auto":
        optim = "paged_adamw_32bit" if quantization == "nf4" and cuda else "adamw_torch"
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=config.batch_size // per_step,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=optim,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        **{checkpointing: config.gradient_checkpointing, f"{checkpointing}_kwargs": {"use_reentrant": False}},
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to="none",
        ddp_find_unused_parameters=False,
    )


def _plan(
    config: TrainConfig, args, quantization: str, splits, world_size: int, threads: tuple[int, str] = (1, "")
) -> list[str]:
    """What the run will do, with the reason for the default step count."""
    import torch

    device = "CUDA GPU" if torch.cuda.is_available() else "CPU"
    if quantization == "nf4":
        precision = "4-bit NF4 base (QLoRA), adapter in float32"
    else:
        why = "no CUDA GPU" if not torch.cuda.is_available() else "--quantization none"
        precision = f"full-precision float32 base ({why}; QLoRA's 4-bit NF4 with --quantization nf4)"
    adapter = f"{config.method} r={config.r}"
    if config.method in PROLORA_METHODS:
        adapter += f" u={config.unshared_r} m={config.sharing_rate_a} n={config.sharing_rate_b}"
    held = f" / {len(splits.heldout):,} held-out" if splits.heldout is not None else ""
    lines = [
        (
            f"prolora train — {adapter}, alpha {config.lora_alpha:g}{' (rsLoRA: /√r)' if config.use_rslora else ''}, "
            f"dropout {config.lora_dropout:g}, "
            f"target {config.target_modules}"
        ),
        f"  model     : {config.model or DEFAULT_MODEL + ' (embedded SmolLM2-135M-Instruct)'} on {device}, {precision}",
        *([] if torch.cuda.is_available() else [f"  threads   : {threads[0]} ({threads[1]})"]),
        (
            f"  data      : {config.data or 'embedded FLAN CoT'}: {len(splits.train):,} train{held} conversations, "
            f"{config.chat_format} format, at most {config.max_length} tokens"
        ),
        f"  held-out  : {splits.heldout_note}",
        (
            f"  steps     : {config.max_steps} × batch {config.batch_size} (micro-batch {config.micro_batch_size} × "
            f"accumulation {args.gradient_accumulation_steps} × {world_size} process(es))"
        ),
        (
            f"  optimizer : {args.optim.value}, lr {config.learning_rate:g} {config.lr_scheduler}, warmup "
            f"{config.warmup_ratio:.0%}, weight decay {config.weight_decay:g}, max grad norm {config.max_grad_norm:g}, "
            f"{'grouped by length, ' if config.group_by_length else ''}seed {config.seed}"
        ),
        f"  output    : {args.output_dir}",
    ]
    if config.max_steps == DEFAULT_MAX_STEPS:
        lines.append(
            f"  why       : max_steps={config.max_steps} is the default: {DEFAULT_STEPS_REASON} "
            "(override with --max-steps)"
        )
    return lines


def _report_issues(issues, output_dir: str) -> None:
    if not issues or not is_main_process():
        return
    path = os.path.join(output_dir, "data_issues.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{issue}\n" for issue in issues)
    counts = {a: sum(i.action == a for i in issues) for a in ("skipped", "truncated")}
    from prolora.data.readers import summarize_issues

    say(
        f"  data issues: {counts['skipped']} skipped, {counts['truncated']} truncated (all in {path}):",
        *(f"    {line}" for line in summarize_issues(issues, 5)),
    )


def _save_adapter(model, trainer, output_dir: str) -> str:
    """Write the adapter to ``<output_dir>/adapter`` atomically (main process); returns that path."""
    from prolora.files import replace_dir
    from prolora.format import ADAPTER_DIR  # here: prolora.format loads torch and peft

    final = os.path.join(output_dir, ADAPTER_DIR)
    if trainer.args.should_save:
        staging = os.path.join(output_dir, f".{ADAPTER_DIR}-staging")
        model.save_pretrained(staging)
        replace_dir(staging, final)
    trainer.accelerator.wait_for_everyone()
    return final


def _heldout_losses(model, heldout, tokenizer) -> dict:
    """Held-out loss of the base model (adapter disabled) and of the adapter, in nats per assistant token:
    token-weighted over the whole held-out split in its file order (:func:`prolora.data.token_loss`), so
    the same for every seed and batch size. ``heldout=None`` (no split, or an interrupted run) gives
    ``None`` losses."""
    from prolora.data import token_loss

    if heldout is None:
        return {
            "heldout_examples": 0,
            "heldout_tokens": 0,
            "heldout_loss_base": None,
            "heldout_loss_adapter": None,
        }
    show = is_main_process()
    with model.disable_adapter():
        base, _ = token_loss(
            model, heldout, tokenizer, HELDOUT_BATCH_SIZE, "held-out loss, base" if show else None
        )
    adapted, tokens = token_loss(
        model, heldout, tokenizer, HELDOUT_BATCH_SIZE, "held-out loss, adapter" if show else None
    )
    return {
        "heldout_examples": len(heldout),
        "heldout_tokens": tokens,
        "heldout_loss_base": base,
        "heldout_loss_adapter": adapted,
    }


def _print_summary(summary: dict, path: str) -> None:
    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    lora = (
        f"LoRA r={summary['r']} on the same modules: {summary['lora_same_rank_params']:,} params, "
        f"{summary['lora_same_rank_bytes'] / 1e6:.2f} MB in float32"
    )
    lines = [
        f"summary ({path})"
        + (f" — INTERRUPTED by {summary['interrupted']}" if summary["interrupted"] else ""),
        f"  trainable params : {summary['trainable_params']:,} ({lora})",
        f"  adapter file     : {summary['adapter_file_bytes'] / 1e6:.2f} MB ({summary['adapter_dir']})",
        (
            f"  training         : {summary['session_steps']} steps, {summary['session_tokens']:,} tokens in "
            f"{summary['train_time_s']:.0f} s: {num(summary['tokens_per_s'], '.0f')} tokens/s"
            + (
                f" (steps {summary['steps'] - summary['session_steps'] + 1}–{summary['steps']}, after resuming)"
                if summary["session_steps"] != summary["steps"]
                else ""
            )
        ),
        (
            f"  train loss       : {num(summary['train_loss_mean'], '.4f')} (mean over these {summary['session_steps']} "
            f"steps; last {summary['train_loss_final_steps']} step(s): {num(summary['train_loss_final'], '.4f')})"
        ),
        (
            f"  held-out loss    : base {num(summary['heldout_loss_base'], '.4f')} -> adapter "
            f"{num(summary['heldout_loss_adapter'], '.4f')} ({summary['heldout_examples']} examples)"
        ),
        f"  wall time        : {summary['wall_time_s']:.0f} s",
    ]
    if summary["interrupted"] and summary["session_steps"] == 0 and summary["steps"] == 0:
        lines.append("  continue with    : nothing to resume, no step finished; start the run again")
    elif summary["interrupted"]:
        lines.append(
            f"  continue with    : prolora train --resume --output-dir {summary['output_dir']} (same flags)"
        )
    if summary["adapter_identical_across_ranks"] is not None:
        lines.append(
            f"  {summary['world_size']} processes, adapters identical: "
            f"{summary['adapter_identical_across_ranks']}"
        )
    say(*lines)


def train(config: TrainConfig, *, base_model=None, adapter_config=None) -> dict:
    """Run training as configured; returns the summary (also in ``summary.json``).

    ``base_model``: an already loaded base model (:func:`load_base_model`) to adapt in place instead of
    loading ``config.model`` (callers training many adapters pass a fresh copy each time).
    ``adapter_config``: a PEFT config to use instead of the one built from the method fields of ``config``.

    Summary keys: method, model, r, output_dir, adapter_dir; trainable_params, adapter_file_bytes
    (adapter_model.safetensors), lora_same_rank_params / lora_same_rank_bytes (a LoRA of rank r on the same
    modules, float32 tensors); steps and train_tokens (non-padding input tokens, all processes) since the
    run began, session_steps and session_tokens of this call (they differ after ``--resume``), tokens_per_s
    (session_tokens / train_time_s), train_time_s (the Trainer's training loop); train_loss_mean (mean over
    the session's steps), train_loss_final (mean over the last logged window, which ends at the last step)
    and train_loss_final_steps (its length); heldout_examples, heldout_tokens, heldout_loss_base,
    heldout_loss_adapter (nats per assistant token, token-weighted over the split: the same for any seed);
    wall_time_s;
    quantization, world_size, adapter_identical_across_ranks (None for one process); interrupted (signal
    name or None).

    torch's CPU thread count is ``config.threads`` or :func:`prolora.threads.set_threads`'s default during
    the call, and is restored afterwards.
    """
    import torch

    started = time.perf_counter()
    previous = torch.get_num_threads()
    threads = set_threads(config.threads)
    try:
        return _train(config, threads, started, base_model, adapter_config)
    finally:
        torch.set_num_threads(previous)  # a library call leaves torch's setting as it found it


def _train(config: TrainConfig, threads: tuple[int, str], started: float, base_model, adapter_config) -> dict:
    from accelerate.utils import gather_object
    from transformers import DataCollatorForSeq2Seq, set_seed

    from prolora.base_models import load_tokenizer
    from prolora.data import load_splits, read_sources
    from prolora.method_presets import make_adapter_config
    from prolora.params import count_parameters

    from .trainer import (
        CheckpointTrainer,
        JsonlLogCallback,
        SessionTotals,
        StopOnSignal,
        adapter_fingerprint,
        truncate_log,
    )

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    existed = config.output_dir is not None and os.path.exists(config.output_dir)
    output_dir, checkpoint = prepare_output_dir(config, world_size)
    with _removed_on_error(output_dir, not existed and world_size == 1):  # setup failed: leave no empty run
        # the data first: a bad file is reported in seconds, not after the model (and its cache) loads
        sources = read_sources(config.data, config.heldout_data, config.heldout_size)
        quantization = resolve_quantization(config.quantization)
        tokenizer = load_tokenizer(config.model)
        splits = load_splits(
            tokenizer,
            config.data,
            config.heldout_data,
            config.heldout_size,
            config.max_length,
            config.chat_format,
            config.seed,
            sources,
        )
        args = training_arguments(config, output_dir, world_size, quantization)
        say(*_plan(config, args, quantization, splits, world_size, threads))
        _report_issues(splits.issues, output_dir)
        if is_main_process():
            write_json(
                os.path.join(output_dir, "run_config.json"),
                {
                    **config.to_dict(),
                    "output_dir": output_dir,
                    "quantization_resolved": quantization,
                    "optim_resolved": args.optim.value,
                    "gradient_accumulation_steps": args.gradient_accumulation_steps,
                    "world_size": world_size,
                    "threads_resolved": threads[0],
                    "heldout_examples": 0 if splits.heldout is None else len(splits.heldout),
                    "resumed_from": checkpoint,
                    # the adapter records the model's name (base_model_name_or_path); its local file here
                    "base_model_name": model_name(config.model),
                    "base_model_file": model_file(config.model),
                },
            )

        set_seed(config.seed)  # the adapter's random initialisation
        model = base_model if base_model is not None else load_base_model(config.model, quantization)
        lora = count_parameters(
            model, "lora", r=config.r, target_modules=config.target_modules
        )  # before wrapping
        from peft import get_peft_model

        model = get_peft_model(
            model,
            adapter_config
            or make_adapter_config(
                config.method,
                r=config.r,
                u=config.unshared_r,
                m=config.sharing_rate_a,
                n=config.sharing_rate_b,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.target_modules,
                use_rslora=config.use_rslora,
            ),
        )
        trainable, _ = model.get_nb_trainable_parameters()

        log_path = os.path.join(output_dir, "train_log.jsonl")
        if checkpoint and is_main_process():
            truncate_log(log_path, int(checkpoint.rsplit("-", 1)[1]))
        stop, totals = StopOnSignal(), SessionTotals()
        trainer = CheckpointTrainer(
            model=model,
            args=args,
            train_dataset=splits.train,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[JsonlLogCallback(log_path), stop, totals],
            lr_shared_scale=config.lr_shared_scale,
        )
    if checkpoint:
        say(f"resuming from {checkpoint}")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    adapter_dir = _save_adapter(model, trainer, output_dir)

    state = trainer.state
    steps_logged = [e for e in state.log_history if "loss" in e]
    fingerprints = gather_object([adapter_fingerprint(model)])
    session_tokens = state.num_input_tokens_seen - totals.tokens_at_start
    train_time = result.metrics["train_runtime"]
    window_start = max(
        [e["step"] for e in steps_logged[:-1]] + [totals.step_at_start]
    )  # the Trainer's window
    final_window = steps_logged[-1]["step"] - window_start if steps_logged else 0
    summary = {
        "method": config.method,
        "model": config.model or DEFAULT_MODEL,
        "r": config.r,
        "output_dir": output_dir,
        "adapter_dir": adapter_dir,
        "trainable_params": trainable,
        "adapter_file_bytes": os.path.getsize(os.path.join(adapter_dir, "adapter_model.safetensors")),
        "lora_same_rank_params": lora.params,
        "lora_same_rank_bytes": lora.bytes,
        "steps": state.global_step,
        "train_tokens": state.num_input_tokens_seen,
        "session_steps": state.global_step - totals.step_at_start,
        "session_tokens": session_tokens,
        "tokens_per_s": session_tokens / train_time if train_time > 0 else None,
        "train_time_s": train_time,
        "train_loss_final": steps_logged[-1]["loss"] if steps_logged else None,
        "train_loss_final_steps": final_window,
        "train_loss_mean": result.training_loss if state.global_step > totals.step_at_start else None,
        **_heldout_losses(model, None if stop.received else splits.heldout, tokenizer),
        "quantization": quantization,
        "world_size": world_size,
        "adapter_identical_across_ranks": len(set(fingerprints)) == 1 if world_size > 1 else None,
        "interrupted": stop.received,
    }
    summary["wall_time_s"] = time.perf_counter() - started
    path = os.path.join(output_dir, "summary.json")
    if is_main_process():
        write_json(path, summary)
    _print_summary(summary, path)
    return summary
