"""``prolora train``: finetune a causal LM with a PRoLoRA (or LoRA-family) adapter on instruction data.

With no arguments: PRoLoRA (r=8, u=1, m=n=7) on the embedded SmolLM2-135M-Instruct and the embedded FLAN
CoT set, with the paper's Appendix A.2 settings and a step count sized for a few minutes on a CPU. Every
setting is a flag (``prolora train --help``) and a key of ``--config FILE`` (YAML or JSON); flags win.
Runs unchanged under ``torchrun --nproc_per_node N`` and ``accelerate launch`` (DDP).
"""

from __future__ import annotations

import sys

from prolora.train.config import add_config_arguments


def add_arguments(parser) -> None:
    add_config_arguments(parser)


def run(args) -> int:
    """Exit status: 0 done, 130 interrupted (adapter and checkpoint saved), 2 bad configuration or data."""
    from prolora.train.config import resolve_config
    from prolora.train.run import train

    try:
        config = resolve_config(args)
    except (ValueError, TypeError, OSError) as exc:
        print(f"prolora train: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = train(config)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"prolora train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prolora train: aborted; the last checkpoint is kept (resume with --resume)", file=sys.stderr)
        return 130
    return 130 if summary["interrupted"] else 0
