"""The ``sweep``, ``compare`` and ``whatif`` commands of ``plan-search``.

``register(app)`` adds them to the main typer app (``optimizer/cli.py``). Bad input raises
:class:`InputError`, which the main entry point prints as one line with exit status 2; otherwise the
exit status is 0, or 1 when ``compare`` finds changes past its threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer



ERRORS_SHOWN = 3
"""Failed scenarios quoted in the summary line of a sweep with errors (the table holds them all)."""


def _error_summary(run, out_dir: Path) -> str:
    """One line: how many scenarios failed, and the first few reasons."""
    errors = run.errors()
    quoted = "; ".join(f"#{row.scenario_index} {row.model} on {row.cluster}: {_cut(str(row.reason), 240)}"
                       for row in errors.head(ERRORS_SHOWN).itertuples())
    more = f"; and {len(errors) - ERRORS_SHOWN} more" if len(errors) > ERRORS_SHOWN else ""
    return (f"plan-search: error: {len(errors)} of {run.scenarios} scenarios failed ({quoted}{more}); their rows "
            f"in {out_dir} have status 'error' and a rerun searches them again; --allow-errors exits 0 anyway")


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def sweep_command(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML (axes over models, clusters and training settings)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: sweep-<name>)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes (default: one per CPU; 1 = in this process)."),
    dask_scheduler: Optional[str] = typer.Option(None, "--dask-scheduler", help="Run on an existing dask.distributed scheduler, e.g. tcp://host:8786."),
    csv: bool = typer.Option(False, "--csv", help="Also write results.csv."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    max_scenarios: int = typer.Option(100_000, "--max-scenarios", help="Refuse a sweep of more scenarios than this (counted before any is built)."),
    scenario_timeout_s: float = typer.Option(300.0, "--scenario-timeout-s", help="Wall-clock limit per scenario in seconds; a scenario past it is an error row, searched again on a rerun (0 = no limit)."),
    allow_errors: bool = typer.Option(False, "--allow-errors", help="Exit 0 even when some scenarios fail (their rows say why)."),
) -> None:
    """Run every scenario of a sweep file into OUT/results.parquet; a rerun resumes where it stopped.

    Exit status: 0 every scenario has a result (plans, or no_fit with the reason); 1 some scenarios
    failed (the table is written with their error rows; --allow-errors makes this 0) or the backend
    failed mid-sweep (a pool worker killed, the Dask scheduler lost); 2 bad input, a missing optional
    package or more scenarios than --max-scenarios, all found before any search; 130 Ctrl-C; 143
    SIGTERM. Interrupted or failed, the scenarios already finished stay in OUT/parts for the rerun."""
    from .runner import SweepFault, SweepTerminated, run_sweep
    from .sweep_file import load_sweep

    sweep = load_sweep(sweep_file)
    out_dir = out or Path(f"sweep-{sweep.name}")
    resume = f"finished scenarios are kept in {out_dir / 'parts'}; rerun the same command to resume"
    try:
        run = run_sweep(sweep, out_dir, workers=workers, dask_scheduler=dask_scheduler, csv=csv, progress=progress,
                        max_scenarios=max_scenarios, scenario_timeout_s=scenario_timeout_s,
                        announce=lambda line: typer.echo(line, err=True))
    except SweepTerminated:
        typer.echo(f"plan-search: terminated (SIGTERM); {resume}", err=True)
        raise typer.Exit(143) from None
    except KeyboardInterrupt:
        typer.echo(f"plan-search: sweep interrupted; {resume}", err=True)
        raise  # 'plan-search: aborted', status 130
    except SweepFault as exc:
        typer.echo(f"plan-search: error: {exc}", err=True)
        raise typer.Exit(1) from None
    best = run.frame[(run.frame["status"] != "ok") | (run.frame["rank"] == 1)]
    counts = best["status"].value_counts().to_dict()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "no_fit", "error"))
    typer.echo(f"{run.scenarios} scenarios ({summary}): {run.computed} searched on {run.backend}, "
               f"{run.reused} reused from an earlier run; {run.seconds:.1f} s"
               + (f", {run.scenarios_per_s:.1f} scenarios/s" if run.computed else ""))
    for path in run.paths:
        typer.echo(f"wrote {path}")
    if len(run.errors()) and not allow_errors:
        typer.echo(_error_summary(run, out_dir), err=True)
        raise typer.Exit(1)


def compare_command(
    old: Path = typer.Argument(..., help="Earlier results (results.parquet/.csv or a sweep output directory)."),
    new: Path = typer.Argument(..., help="Later results."),
    threshold: Optional[float] = typer.Option(None, "--threshold",
                                              help="Relative change that counts (0.05 = 5%, the default)."),
) -> None:
    """List scenarios whose best plan changed or whose throughput, memory or cost moved past the threshold,
    with the inputs that differ between OLD and NEW for each; exit 1 when there are any (a nightly gate)."""
    # pandas and the comparison load here, not when the CLI starts (every other command's start-up)
    from .compare import DEFAULT_THRESHOLD, compare_tables
    from .extras import require_parquet_reader
    from .store import read_results

    if threshold is None:
        threshold = DEFAULT_THRESHOLD
    for path in (old, new):
        require_parquet_reader(path)
    comparison = compare_tables(read_results(old, "OLD"), read_results(new, "NEW"), threshold,
                                old_source=str(old), new_source=str(new))
    typer.echo(comparison.text())
    raise typer.Exit(1 if comparison.failed else 0)


def whatif_command(
    study_file: Path = typer.Argument(..., help="Procurement study YAML (model, token budget, cluster options)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: whatif-<name>)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes (default 1: in this process)."),
    allow_errors: bool = typer.Option(False, "--allow-errors", help="Exit 0 even when some searches fail (their rows say why)."),
) -> None:
    """Compare cluster options for one model and token budget: summary.md, tables and figures.

    Options are ranked by effective days and cost (failures, checkpoints and restarts counted), with
    each option's average and peak megawatts, energy and (with energy_price_usd_per_mwh) its cost; an
    option whose peak exceeds the study's site_power_mw is dropped, and the command says so.

    Exit status: 0 the study ran (an option where nothing fits is an answer: a row saying why); 1 some
    search failed (the report is still written, the failures are listed; --allow-errors makes this 0);
    2 bad input or a missing optional package, found before any search."""
    from .extras import require

    require(("matplotlib", "pyarrow"), "whatif", "its figures and plans.parquet")
    from .procurement import load_study, run_study, write_report

    study = load_study(study_file)
    if workers is not None and workers < 1:
        from hardware.errors import InputError

        raise InputError("command line", "--workers", f"must be at least 1, got {workers}", "e.g. --workers 2")
    out_dir = out or Path(f"whatif-{study.name}")
    result = run_study(study, workers=workers)
    for path in write_report(result, out_dir):
        typer.echo(f"wrote {path}")
    for line in result.dropped:
        typer.echo(f"dropped {line}")
    errors = result.errors
    if errors:
        total = len(result.options) + len(result.sensitivity)
        typer.echo(f"plan-search: {len(errors)} of {total} searches of the study failed "
                   f"(rows with status 'error' in the report):", err=True)
        for line in errors:
            typer.echo(f"  {line}", err=True)
        if not allow_errors:
            typer.echo("plan-search: exit status 1; pass --allow-errors to accept a study with failed searches",
                       err=True)
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the commands to the main ``plan-search`` app."""
    app.command("sweep")(sweep_command)
    app.command("compare")(compare_command)
    app.command("whatif")(whatif_command)
