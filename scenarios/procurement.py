"""Procurement what-if: which cluster to buy or rent for one model and one token budget.

A study file names the model, the training run and the cluster options, each at its price::

    name: llama3-405b-15t
    model: llama3-405b                 # preset or file (relative to this file)
    training: {seq_length: 8192, global_batch_tokens: 16777216, train_tokens: 15.0e+12}
    objective: throughput              # how the best plan of each option is chosen
    options:
      - {name: H100 x 4096, cluster: h100x4096, price_per_gpu_hour_usd: 2.50}
      - {name: B200 x 2048, cluster: b200x2048, price_per_gpu_hour_usd: 5.00,
         overrides: {topology.nic_gbps: 800}}
    sensitivity:                       # optional: one parameter at a time, on one option
      - {option: H100 x 4096, parameter: topology.nic_gbps, values: [200, 400, 800]}

For each option the plan search finds the best plan; the study reports its time-to-train, GPU-hours,
dollars and energy, marks the options on the cost-vs-time Pareto frontier (no other option is both
faster and cheaper), and reruns the search for each sensitivity value. :func:`write_report` writes
``summary.md`` (readable without the tool), ``options.csv``, ``sensitivity.csv`` and the figures
``pareto.png/.svg`` and ``sensitivity.png/.svg``.

Every option and sensitivity point is a scenario run by :func:`scenarios.runner.run_task`, so an
option that fits nowhere is a ``no_fit`` row with its reason, never a failed study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cost_model.model_loader import ModelInput, build_training
from cost_model.params import ParameterCounts
from hardware.errors import InputError, did_you_mean, read_yaml_mapping
from hardware.schema import ClusterSpec
from optimizer.ranking import pareto_front
from optimizer.search import Scenario
from optimizer.search_options import SearchOptions

from .identity import stable_hash, tool_version
from .plots import pareto_plot, sensitivity_plot
from .rows import typed_frame
from .runner import run_tasks
from .sweep_file import (ScenarioTask, _check_objective, _load_cluster, _load_model, _search_options,
                         _training_section, resolved_columns)

STUDY_KEYS = ("name", "description", "model", "training", "objective", "top_k", "search", "options", "sensitivity")
OPTION_KEYS = ("name", "cluster", "price_per_gpu_hour_usd", "overrides")
SENSITIVITY_KEYS = ("option", "parameter", "values")
PRICE_FIELD = "economics.price_per_gpu_hour_usd"


@dataclass(frozen=True)
class ClusterOption:
    name: str
    cluster_label: str
    cluster: ClusterSpec
    """With the option's overrides and price applied."""
    overrides: dict[str, Any]


@dataclass(frozen=True)
class Sensitivity:
    option: str
    parameter: str
    values: tuple[Any, ...]

    @property
    def label(self) -> str:
        return f"{self.parameter} on {self.option}"


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    source: str
    model_label: str
    model: ModelInput
    training: dict[str, Any]
    options_spec: SearchOptions
    options: tuple[ClusterOption, ...]
    sensitivities: tuple[Sensitivity, ...]


@dataclass
class StudyResult:
    study: Study
    options: pd.DataFrame
    """One row per cluster option: its best plan and what the run costs; ``pareto`` marks the frontier."""
    sensitivity: pd.DataFrame
    """One row per sensitivity point: the parameter's value and the best plan there."""
    plans: pd.DataFrame
    """Every returned plan of every scenario of the study (the tidy table of a sweep)."""


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; one-line InputError naming the file and field on bad input."""
    path = Path(path)
    data = read_yaml_mapping(path)
    source, base = str(path), path.parent
    for key in data:
        if key not in STUDY_KEYS:
            raise InputError(source, str(key), f"unknown key{did_you_mean(str(key), STUDY_KEYS)}",
                             f"known keys: {', '.join(STUDY_KEYS)}")
    if not isinstance(data.get("model"), str):
        raise InputError(source, "model", "is missing or not a name", "e.g. model: llama3-405b")
    model = _load_model(data["model"], base, source, 0)
    objective = data.get("objective", "throughput")
    _check_objective(objective, source, "objective")
    top_k = data.get("top_k", 5)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(source, "top_k", f"must be a positive whole number, got {top_k!r}", "e.g. top_k: 5")
    search_options = _search_options(data.get("search") or {}, source, top_k, objective)
    training = {**model.training_overrides, **_training_section(data.get("training") or {}, source)}
    try:
        trial = build_training(training, source=f"{source}: training", model=model.spec)
    except InputError as exc:
        raise InputError(source, "training", exc.problem, exc.fix) from None
    if trial.train_tokens is None:
        raise InputError(source, "training.train_tokens", "is missing: time-to-train and cost need a token budget",
                         "add e.g. train_tokens: 15.0e+12")
    raw_options = data.get("options")
    if not isinstance(raw_options, list) or not raw_options:
        raise InputError(source, "options", "is missing or empty", "list the cluster options to compare")
    options = tuple(_option(raw, i, base, source) for i, raw in enumerate(raw_options))
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise InputError(source, "options", f"option names repeat ({names})", "give each option its own name")
    sensitivities = tuple(_sensitivity(raw, i, names, options, source)
                          for i, raw in enumerate(data.get("sensitivity") or []))
    return Study(name=str(data.get("name") or path.stem), description=str(data.get("description") or ""),
                 source=source, model_label=data["model"], model=model, training=training,
                 options_spec=search_options, options=options, sensitivities=sensitivities)


def _check_entry(raw: Any, where: str, known: tuple[str, ...] | list[str], example: str, source: str) -> None:
    """An entry of a list in the study file: a mapping whose keys are all known."""
    if not isinstance(raw, dict):
        raise InputError(source, where, "must be a mapping", f"e.g. {example}")
    for key in raw:
        if key not in known:
            raise InputError(source, f"{where}.{key}", f"unknown key{did_you_mean(str(key), known)}",
                             f"known keys: {', '.join(known)}")


def _option(raw: Any, index: int, base: Path, source: str) -> ClusterOption:
    where = f"options[{index}]"
    _check_entry(raw, where, OPTION_KEYS, "{name: H100 x 1024, cluster: h100x1024}", source)
    if not raw.get("name") or not isinstance(raw.get("cluster"), str):
        raise InputError(source, where, "needs a name and a cluster", "e.g. {name: H100 x 1024, cluster: h100x1024}")
    overrides = dict(raw.get("overrides") or {})
    if "price_per_gpu_hour_usd" in raw:
        overrides[PRICE_FIELD] = raw["price_per_gpu_hour_usd"]
    cluster = _load_cluster(raw["cluster"], base, source, index)
    try:
        cluster = cluster.with_overrides(overrides, source=source)
    except InputError as exc:
        raise InputError(source, f"{where}.overrides.{exc.field}", exc.problem, exc.fix) from None
    if cluster.economics.price_per_gpu_hour_usd is None:
        raise InputError(source, f"{where}.price_per_gpu_hour_usd", "is missing: the study compares dollars",
                         "add e.g. price_per_gpu_hour_usd: 2.5")
    return ClusterOption(name=str(raw["name"]), cluster_label=raw["cluster"], cluster=cluster, overrides=overrides)


def _sensitivity(raw: Any, index: int, names: list[str], options: tuple[ClusterOption, ...],
                 source: str) -> Sensitivity:
    where = f"sensitivity[{index}]"
    _check_entry(raw, where, SENSITIVITY_KEYS,
                 "{option: H100 x 1024, parameter: topology.nic_gbps, values: [200, 400]}", source)
    option = raw.get("option")
    if option not in names:
        raise InputError(source, f"{where}.option", f"unknown option {option!r}{did_you_mean(str(option), names)}",
                         f"use one of: {', '.join(names)}")
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        raise InputError(source, f"{where}.values", "is missing or empty", "list the values to try")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise InputError(source, f"{where}.values", f"must be numbers, got {values}", "e.g. values: [200, 400, 800]")
    parameter = str(raw.get("parameter"))
    base = options[names.index(option)].cluster
    try:  # check the name (and the first value) now; a value that fails on its own becomes a no-fit row
        base.with_overrides({parameter: values[0]}, source=source)
    except InputError as exc:
        if exc.field == parameter and exc.problem.startswith("unknown field"):
            raise InputError(source, f"{where}.parameter", exc.problem, exc.fix) from None
    return Sensitivity(option=option, parameter=parameter, values=tuple(values))


def _tasks(study: Study) -> list[ScenarioTask]:
    """The option scenarios first, then each sensitivity point's, in file order."""
    tasks = []
    training = None
    try:
        training = build_training(study.training, source=f"{study.source}: training")
    except InputError:
        pass  # checked in load_study
    points: list[tuple[str, str, str | None, Any, ClusterSpec | None, str | None]] = []
    for option in study.options:
        points.append(("option", option.name, None, None, option.cluster, None))
    by_name = {o.name: o for o in study.options}
    for sens in study.sensitivities:
        for value in sens.values:
            try:
                cluster, error = by_name[sens.option].cluster.with_overrides({sens.parameter: value},
                                                                             source=study.source), None
            except InputError as exc:
                cluster, error = None, str(exc)
            points.append(("sensitivity", sens.option, sens.label, value, cluster, error))
    for index, (part, option, study_label, value, cluster, error) in enumerate(points):
        scenario = None
        if cluster is not None:
            scenario = Scenario(model=study.model.spec, training=training, cluster=cluster, options=study.options_spec)
        params = {"study": study.name, "scenario_index": index, "part": part, "option": option,
                  "sensitivity": study_label, "value": value, "tool_version": tool_version(),
                  "inputs_hash": stable_hash({"scenario": scenario, "error": error, "version": tool_version()}),
                  "model": study.model_label, "cluster": by_name[option].cluster_label}
        params.update(resolved_columns(scenario, study.model, {}, study.options_spec.objective))
        tasks.append(ScenarioTask(index=index, params=params, scenario=scenario, error=error, explain=True))
    return tasks


def run_study(study: Study, workers: int | None = None) -> StudyResult:
    """Search every option and sensitivity point; build the option, sensitivity and plan tables."""
    tasks = _tasks(study)
    results = {task.index: rows for task, rows in run_tasks(tasks, workers)}
    rows = [{**task.params, **row} for task in tasks for row in results[task.index]]
    plans = typed_frame(rows, list(tasks[0].params))
    best = plans[plans["rank"].isna() | (plans["rank"] == 1)]
    options = best[best["part"] == "option"].reset_index(drop=True).copy()
    ok = (options["status"] == "ok").to_numpy()
    pareto = np.zeros(len(options), dtype=bool)
    if ok.any():
        index = np.flatnonzero(ok)
        front = pareto_front(options.loc[ok, "time_to_train_days"].to_numpy(float),
                             options.loc[ok, "cost_usd"].to_numpy(float))
        pareto[index[front]] = True
    options["pareto"] = pareto
    sensitivity = best[best["part"] == "sensitivity"].reset_index(drop=True).copy()
    sensitivity["study"] = sensitivity["sensitivity"]
    base_plan = dict(zip(options["option"], options["plan"]))
    sensitivity["plan_changed"] = [None if status != "ok" else plan != base_plan.get(option)
                                   for status, plan, option in zip(sensitivity["status"], sensitivity["plan"],
                                                                   sensitivity["option"])]
    return StudyResult(study=study, options=options, sensitivity=sensitivity, plans=plans)


OPTION_TABLE = ("option", "num_gpus", "gpu", "price_per_gpu_hour_usd", "status", "plan", "tokens_per_s", "mfu",
                "memory_gib", "time_to_train_days", "gpu_hours", "cost_usd", "energy_mwh", "pareto", "reason")
SENSITIVITY_TABLE = ("sensitivity", "option", "value", "status", "plan", "plan_changed", "tokens_per_s", "mfu",
                     "memory_gib", "time_to_train_days", "gpu_hours", "cost_usd", "energy_mwh", "reason")


def write_report(result: StudyResult, out_dir: str | Path) -> list[Path]:
    """summary.md, options.csv, sensitivity.csv, plans.parquet and the figures, into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "", "is a file, not a directory", "pass a directory for --out")
    out.mkdir(parents=True, exist_ok=True)
    study = result.study
    paths = []
    result.options[list(OPTION_TABLE)].to_csv(out / "options.csv", index=False)
    paths.append(out / "options.csv")
    result.plans.to_parquet(out / "plans.parquet", index=False)
    paths.append(out / "plans.parquet")
    model = f"{study.model.spec.name}"
    paths += pareto_plot(result.options, out / "pareto", f"{model}: cost vs time to train per cluster option")
    if len(result.sensitivity):
        result.sensitivity[list(SENSITIVITY_TABLE)].to_csv(out / "sensitivity.csv", index=False)
        paths.append(out / "sensitivity.csv")
        paths += sensitivity_plot(result.sensitivity, out / "sensitivity", f"{model}: sensitivity of the best plan")
    (out / "summary.md").write_text(summary_markdown(result), encoding="utf-8")
    paths.append(out / "summary.md")
    return paths


def summary_markdown(result: StudyResult) -> str:
    """The study as Markdown a person can read without the tool: inputs, options, frontier, sensitivity."""
    study, options = result.study, result.options
    tr = build_training(study.training, source=study.source)
    counts = ParameterCounts(study.model.spec)
    lines = [f"# What-if study: {study.name}", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [
        f"**Model** {study.model.spec.name} ({counts.total / 1e9:,.1f}B parameters, "
        + ("dense" if counts.active == counts.total else f"{counts.active / 1e9:,.1f}B active per token")
        + f"). **Run** {tr.train_tokens / 1e12:,.3g}T tokens at sequence length {tr.seq_length:,}, "
        f"global batch {tr.global_batch_size:,} sequences ({tr.global_batch_tokens / 1e6:,.1f}M tokens), {tr.precision}. "
        f"**Best plan** of each option chosen by {study.options_spec.objective}, among every TP/PP/DP/CP/EP layout, "
        f"micro-batch, virtual pipeline, recompute, SP and ZeRO setting that fits in "
        f"{1 - study.options_spec.memory_headroom:.0%} of GPU memory.",
        "",
        f"Generated by plan-search {tool_version()} from `{Path(study.source).name}`. Prices are the study "
        "file's; time and throughput are model predictions (upper bounds until the efficiency constants are "
        "calibrated, see the README), cost = GPU-hours x price, energy = GPU-hours x power per GPU "
        "(host share included) x PUE.",
        "",
        "## Cluster options",
        "",
        "| option | GPUs | $/GPU-h | best plan | tokens/s | MFU | memory GiB | days | GPU-hours (M) | cost $M | energy MWh | frontier |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for _, row in options.iterrows():
        if row["status"] != "ok":
            lines.append(f"| {row['option']} | {_n(row['num_gpus'])} | {_money(row['price_per_gpu_hour_usd'])} | "
                         f"**{row['status']}** | | | | | | | | |")
            continue
        lines.append(
            f"| {row['option']} | {_n(row['num_gpus'])} | {_money(row['price_per_gpu_hour_usd'])} | `{row['plan']}` | "
            f"{row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | {row['memory_gib']:.1f} | {row['time_to_train_days']:.1f} | "
            f"{row['gpu_hours'] / 1e6:.2f} | {row['cost_usd'] / 1e6:.2f} | {_opt(row['energy_mwh'], '{:,.0f}')} | "
            f"{'yes' if row['pareto'] else ''} |")
    lines += ["", *_no_fit_lines(options, "option"), "## Cost vs time", ""]
    lines += _frontier_lines(options)
    lines += ["", "![cost vs time to train](pareto.png)", ""]
    if len(result.sensitivity):
        lines += ["## Sensitivity", "",
                  "Each study reruns the search on one option with one parameter changed; `plan changed` compares "
                  "the best plan with that option's best plan above.", ""]
        for label in dict.fromkeys(result.sensitivity["sensitivity"]):
            rows = result.sensitivity[result.sensitivity["sensitivity"] == label]
            lines += [f"### {label}", "",
                      "| value | best plan | plan changed | tokens/s | MFU | memory GiB | days | cost $M |",
                      "|---:|---|:---:|---:|---:|---:|---:|---:|"]
            for _, row in rows.iterrows():
                if row["status"] != "ok":
                    lines.append(f"| {_n(row['value'])} | **{row['status']}** | | | | | | |")
                    continue
                lines.append(f"| {_n(row['value'])} | `{row['plan']}` | {'yes' if row['plan_changed'] else 'no'} | "
                             f"{row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | {row['memory_gib']:.1f} | "
                             f"{row['time_to_train_days']:.1f} | {row['cost_usd'] / 1e6:.2f} |")
            lines += ["", *_sensitivity_sentence(rows), "", *_no_fit_lines(rows, "value")]
        lines += ["![sensitivity](sensitivity.png)", ""]
    lines += ["## Files", "",
              "`options.csv` and `sensitivity.csv` hold these tables; `plans.parquet` every returned plan with "
              "its memory, time and communication breakdowns; `pareto.svg` and `sensitivity.svg` are the "
              "figures as vector graphics.", ""]
    return "\n".join(lines)


def _frontier_lines(options: pd.DataFrame) -> list[str]:
    ok = options[options["status"] == "ok"]
    if ok.empty:
        return ["No option has a plan that fits."]
    front = ok[ok["pareto"]].sort_values("time_to_train_days")
    fastest = ok.loc[ok["time_to_train_days"].idxmin()]
    cheapest = ok.loc[ok["cost_usd"].idxmin()]
    lines = [f"Fastest: **{fastest['option']}**, {fastest['time_to_train_days']:.1f} days for "
             f"${fastest['cost_usd'] / 1e6:.2f}M. Cheapest: **{cheapest['option']}**, "
             f"${cheapest['cost_usd'] / 1e6:.2f}M in {cheapest['time_to_train_days']:.1f} days.", "",
             "On the frontier (no other option is both faster and cheaper), fastest first: "
             + "; ".join(f"{r['option']} ({r['time_to_train_days']:.1f} days, ${r['cost_usd'] / 1e6:.2f}M)"
                         for _, r in front.iterrows()) + "."]
    dominated = ok[~ok["pareto"]]
    for _, row in dominated.iterrows():
        better = front[(front["time_to_train_days"] <= row["time_to_train_days"])
                       & (front["cost_usd"] <= row["cost_usd"])]
        by = f" (beaten by {better.iloc[0]['option']})" if len(better) else ""
        lines.append(f"Dominated: {row['option']}{by}.")
    return lines


def _sensitivity_sentence(rows: pd.DataFrame) -> list[str]:
    ok = rows[rows["status"] == "ok"]
    if len(ok) < 2:
        return []
    first, last = ok.iloc[0], ok.iloc[-1]
    change = last["time_to_train_days"] / first["time_to_train_days"] - 1
    plans = ok["plan"].nunique()
    return [f"From {_n(first['value'])} to {_n(last['value'])}: time to train {change:+.1%}, "
            f"cost {last['cost_usd'] / first['cost_usd'] - 1:+.1%}; {plans} distinct best plan(s)."]


def _no_fit_lines(rows: pd.DataFrame, key: str) -> list[str]:
    lines = [f"* {_n(row[key])}: {row['reason']}" for _, row in rows.iterrows() if row["status"] != "ok"]
    return (["Where nothing fits:", "", *lines, ""] if lines else [])


def _n(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _money(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def _opt(value: Any, fmt: str) -> str:
    return "-" if value is None or pd.isna(value) else fmt.format(value)
