"""Benchmarks of prolora against PEFT's LoRA and the authors' materialise-every-forward approach.

Not part of the test suite. Run ``python benchmarks/run.py`` (see ``benchmarks/README.md``); the report is
written to ``docs/benchmarks.md``.
"""
