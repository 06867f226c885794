"""The Hugging Face Trainer with atomic checkpoints, a JSONL training log and a graceful stop on signals.

Checkpoints: transformers 5.23 writes ``checkpoint-N/`` file by file in place, so a run killed while
saving leaves a partial directory that ``get_last_checkpoint`` (and so ``--resume``) would pick.
:class:`CheckpointTrainer` lets the Trainer write into ``<output_dir>/.checkpoint-staging/checkpoint-N``
and renames the finished directory to ``<output_dir>/checkpoint-N`` (one rename, after every process has
written its part), then rotates old checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from prolora.files import replace_dir

STAGING = ".checkpoint-staging"  # not matched by get_last_checkpoint's "checkpoint-<N>" pattern
SHARED_PARAMETERS = ("prolora_A0", "prolora_B0")  # PRoLoRA's shared chunks; A_u/B_u are the unshared ranks


def scale_shared_lr(optimizer: torch.optim.Optimizer, model, scale: float) -> None:
    """Split each param group of a fresh ``optimizer`` into its unshared and shared parameters (PRoLoRA's
    A_0 and B_0), the shared part at ``scale`` × the group's learning rate (paper Section 6: separate
    learning rates for shared and unshared parameters). Schedulers created afterwards scale both alike."""
    shared = {
        id(p) for name, p in model.named_parameters() if any(f".{k}." in name for k in SHARED_PARAMETERS)
    }
    groups, optimizer.param_groups = optimizer.param_groups, []
    for group in groups:
        for is_shared in (False, True):
            params = [p for p in group["params"] if (id(p) in shared) == is_shared]
            if params:
                optimizer.add_param_group(
                    {**group, "params": params, "lr": group["lr"] * (scale if is_shared else 1.0)}
                )


class CheckpointTrainer(Trainer):
    """A :class:`transformers.Trainer` whose checkpoints appear atomically (see the module docstring), and
    whose optimizer trains PRoLoRA's shared chunks at ``lr_shared_scale`` × the learning rate."""

    _staging = False

    def __init__(self, *args, lr_shared_scale: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_shared_scale = lr_shared_scale

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.lr_shared_scale != 1.0:
            scale_shared_lr(optimizer, self.model if model is None else model, self.lr_shared_scale)
        return optimizer

    def _get_output_dir(self, trial) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            replace_dir(os.path.join(run_dir, STAGING, name), os.path.join(run_dir, name))
            os.rmdir(os.path.join(run_dir, STAGING))
            rotate_checkpoints(run_dir, save_total_limit=self.args.save_total_limit, use_mtime=True)
        self.accelerator.wait_for_everyone()


class JsonlLogCallback(TrainerCallback):
    """Append every training log (step, loss, learning_rate, grad_norm, train_tokens_per_second, ...) to a file.

    ``train_tokens_per_second`` is the Trainer's: non-padding input tokens of all processes per second of
    this session (since start or resume).
    """

    def __init__(self, path: str):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class SessionTotals(TrainerCallback):
    """Totals of this training session (from start or resume), for a summary that is right for any run length.

    Also makes the Trainer log the last step, so that the last line of the log covers the steps since the
    previous logging step (the Trainer logs only every ``logging_steps``, and the first step).
    ``tokens_at_start`` / ``step_at_start``: the counters when this session began (non-zero after resume).
    """

    def __init__(self):
        self.tokens_at_start = 0
        self.step_at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_at_start, self.step_at_start = state.num_input_tokens_seen, state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps or control.should_training_stop:
            control.should_log = True


def truncate_log(path: str, step: int) -> None:
    """Drop log entries after ``step`` (used on resume: those steps are trained again)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(f"{path}.tmp", path)


class StopOnSignal(TrainerCallback):
    """On SIGINT or SIGTERM: finish the current optimizer step, save a checkpoint and end training.

    A second signal aborts at once (``KeyboardInterrupt``). Under distributed training all processes
    must stop at the same step, so the flag is max-reduced across processes after every step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(
            f"\n{self.received} received: saving a checkpoint after this step (send it again to abort).",
            file=sys.stderr,
            flush=True,
        )

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def on_step_end(self, args, state, control, **kwargs):
        stop = torch.tensor([self.received is not None], dtype=torch.int32, device=args.device)
        if args.world_size > 1:
            torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
        if stop.item():
            self.received = self.received or "a signal on another process"
            control.should_save = True
            control.should_training_stop = True


def adapter_fingerprint(model) -> str:
    """SHA-256 over the trainable tensors (by name): equal across processes iff their adapters are equal."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
