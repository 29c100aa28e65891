"""The serving search: ``plan-search serve``.

- :mod:`.grid` enumerates engine-instance layouts and knobs, and the plans built from them;
- :mod:`.search` prices them in chunks with the serving cost model (:mod:`cost_model.serving`), keeping the
  best by an objective, the throughput-interactivity frontier and what each rule rejects;
- :mod:`.ranking` holds the objectives, tie-breaking and the Pareto frontier;
- :mod:`.advice` says what binds when no plan meets the SLO, and which relaxations would help;
- :mod:`.report` renders plans as tables, JSON and CSV; :mod:`.inputs` reads the command line's values;
- :mod:`.cli` holds the typer commands ``serve`` (search) and ``serve evaluate``.
"""
