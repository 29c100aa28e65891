"""Sweeps and procurement studies on top of the plan search.

* :mod:`scenarios.sweep_file` reads a sweep YAML and expands its axes into scenarios;
* :mod:`scenarios.runner` runs them (a local process pool, or an existing dask.distributed cluster),
  resumably, into one tidy table (:mod:`scenarios.rows` defines its columns, :mod:`scenarios.store`
  keeps the per-scenario part files and writes Parquet/CSV);
* :mod:`scenarios.compare` compares two result tables for a nightly gate;
* :mod:`scenarios.procurement` compares cluster options for one model and token budget, with
  :mod:`scenarios.plots` drawing the figures;
* :mod:`scenarios.cli` adds ``sweep``, ``compare`` and ``whatif`` to the ``plan-search`` command.
"""
