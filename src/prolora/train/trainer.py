"""The Hugging Face Trainer with atomic checkpoints, a JSONL training log and a graceful stop on signals.

Checkpoints: transformers 5.23 writes ``checkpoint-N/`` file by file in place, so a run killed while
saving leaves a partial directory that ``get_last_checkpoint`` (and so ``--resume``) would pick.
:class:`CheckpointTrainer` lets the Trainer write into ``<output_dir>/.checkpoint-staging/checkpoint-N``
and renames the finished directory to ``<output_dir>/checkpoint-N`` (one rename, after every process has
written its part), then rotates old checkpoints.

Stopping: on SIGINT or SIGTERM (:class:`StopOnSignal`) training stops at once, within the micro-batch under
way, not after the whole optimizer step (16 micro-batches by default: a minute or more on a loaded CPU,
while schedulers commonly allow 30 s between SIGTERM and SIGKILL); the last micro-batch of an
accumulation, and every micro-batch under distributed training, is finished first. The partial step is
discarded: its gradients, losses, token counts and the random numbers it drew (:class:`CheckpointTrainer`
keeps those of the last finished step), and the checkpoint of the last finished step is written, so that
``--resume`` goes on exactly as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys

import numpy as np
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
        self._step_end: tuple | None = None  # (loss sum, tokens, flos, RNG states) at the last step's end

    def _signal_stop(self) -> StopOnSignal | None:
        return next((c for c in self.callback_handler.callbacks if isinstance(c, StopOnSignal)), None)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's forward and backward of one micro-batch; after a stop signal (one process), a
        micro-batch that is not the last of its accumulation is not computed, and one under way is
        abandoned at once (its result is discarded with the rest of the step, see the module docstring).
        The last micro-batch of an accumulation always finishes: the optimizer step follows it."""
        stop = self._signal_stop()
        abortable = stop is not None and self.args.world_size == 1 and not self.accelerator.sync_gradients
        if not abortable:
            return super().training_step(model, inputs, num_items_in_batch)
        if stop.received is not None:
            return torch.zeros((), device=self.args.device)
        stop.abortable = True
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        except MicroBatchAborted:
            return torch.zeros((), device=self.args.device)
        finally:
            stop.abortable = False

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, model, *args, **kwargs) -> None:
        """Called by the Trainer after each optimizer step and once when an epoch (or training) ends; after a
        stop within an accumulation (:class:`StopOnSignal`), first puts the run back to the end of its last
        finished step and asks for that step's log line and checkpoint."""
        stop = self._signal_stop()
        if stop is not None and stop.mid_step:
            stop.mid_step = False
            model.zero_grad(set_to_none=True)  # the micro-batches of the unfinished step leave no gradient,
            if self._step_end is None:  # no step finished in this session: nothing to log or save
                tr_loss.zero_()
                self.state.num_input_tokens_seen = self._initial_num_input_tokens_seen
            else:
                loss, self.state.num_input_tokens_seen, self.current_flos, rng = self._step_end
                tr_loss.copy_(loss)  # ... no loss, no token ...
                _set_rng_states(rng)  # ... and no random draw (dropout) in the checkpoint
                name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                self.control.should_log = True
                self.control.should_save = not os.path.isdir(
                    os.path.join(super()._get_output_dir(None), name)
                )
        super()._maybe_log_save_evaluate(tr_loss, grad_norm, model, *args, **kwargs)
        self._step_end = (
            tr_loss.detach().clone(),
            self.state.num_input_tokens_seen,
            self.current_flos,
            _rng_states(),
        )

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


def _rng_states() -> dict:
    """The random number generators' states, as the Trainer's checkpoints record them."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.random.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.random.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.random.set_rng_state_all(states["cuda"])


class MicroBatchAborted(BaseException):
    """Raised by :class:`StopOnSignal`'s handler inside a micro-batch that may be abandoned (a
    ``BaseException``, so that no ``except Exception`` on the way swallows it)."""


class StopOnSignal(TrainerCallback):
    """On SIGINT or SIGTERM: stop after the micro-batch under way, discard a partial accumulation, save the
    checkpoint of the last finished step and end training (see the module docstring).

    A second signal aborts at once (``KeyboardInterrupt``). Under distributed training all processes
    must stop at the same micro-batch, so the flag is max-reduced across processes after every micro-batch.
    ``mid_step``: the stop came within an accumulation (read and reset by :class:`CheckpointTrainer`).
    ``abortable``: set by :class:`CheckpointTrainer` while a micro-batch that may be abandoned runs; a
    signal then raises :class:`MicroBatchAborted` there, so the process exits in seconds even when one
    micro-batch takes a minute (a loaded CPU).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None
        self.mid_step = False
        self.abortable = False
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            self._restore()
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        print(
            f"\n{self.received} received: stopping after this micro-batch and keeping the last finished "
            "step's checkpoint (send it again to abort).",
            file=sys.stderr,
            flush=True,
        )
        if self.abortable:
            self.abortable = False
            raise MicroBatchAborted

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def on_train_end(self, args, state, control, **kwargs):
        self._restore()

    def _stop(self, args) -> bool:
        stop = self.received is not None
        if args.world_size > 1:
            flag = torch.tensor([stop], dtype=torch.int32, device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            self.received = self.received or "a signal on another process"
        return stop

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop(args):
            control.should_save = True
            control.should_training_stop = True

    def on_substep_end(self, args, state, control, **kwargs):
        if self._stop(args):
            self.mid_step = True
            control.should_training_stop = True


def adapter_fingerprint(model) -> str:
    """SHA-256 over the trainable tensors (by name): equal across processes iff their adapters are equal."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
