"""``prolora compare``: train and evaluate adapter methods at equal trainable-parameter budgets.

The paper's claim (Section 4.2, Table 2) is about parameter efficiency: at one budget PRoLoRA beats LoRA,
VeRA and Tied-LoRA, and each of its components matters (Section 4.4: Table 4, Figure 2). This package runs
that comparison on any model and data:

* :mod:`.presets`: the experiments as data (``small``: the embedded SmolLM2-135M on a CPU; ``paper``: the
  paper's LLaMA2-7B setting);
* :mod:`.grid`: a preset → the list of cells (one training run each), budgets solved by
  :func:`prolora.params.solve_budget`;
* :mod:`.cells`: runs cells, one result file each, written atomically; finished cells are not rerun;
* :mod:`.report`: the Table 2-style table (mean ± std over seeds), Table 4 and the Figure 2 grid, as
  markdown and JSON;
* :mod:`.plots`: the PNG plots (matplotlib, Agg backend);
* :mod:`.experiment`: one comparison end to end: a preset with overrides (:func:`~.experiment.configure`),
  its cells run and the report written (:func:`~.experiment.run_comparison`).

The command line is :mod:`prolora.cli.compare`.

See ``docs/compare.md``.
"""
