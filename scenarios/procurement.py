"""Procurement what-if: which cluster to buy or rent for one model and one token budget.

A study file names the model, the training run and the cluster options, each at its price::

    name: llama3-405b-15t
    model: llama3-405b                 # preset or file (relative to this file)
    model_name: Llama 3.1 405B         # optional: how the report and figures name the model
    price_source: list prices, 2026-11 # optional: where the prices come from; without it they are
                                       # reported as illustrative
    training: {seq_length: 8192, global_batch_tokens: 16777216, train_tokens: 15.0e+12}
    objective: throughput              # how the best plan of each option is chosen
    site_power_mw: 150                 # optional: the site's supply; an option whose cluster draws more
                                       # while every GPU computes is dropped, and the report says so
    energy_price_usd_per_mwh: 80       # optional: what a megawatt-hour costs the operator, US$
    options:
      - {name: H100 x 4096, cluster: h100x4096, price_per_gpu_hour_usd: 2.50}
      - {name: B200 x 2048, cluster: b200x2048, price_per_gpu_hour_usd: 5.00,
         overrides: {topology.nic_gbps: 800}}
    sensitivity:                       # optional: one parameter at a time, on one option
      - {option: H100 x 4096, parameter: topology.nic_gbps, values: [200, 400, 800]}
    serving:                           # optional: a serving fleet priced on every option beside the run
      {model: llama3-70b, workload: chat-1k-1k, target_rate_per_s: 50, gpus: 64}   # scenarios.serving

For each option the plan search finds the best plan; the study reports its time-to-train, GPU-hours,
dollars, power and energy, nominal (every step runs) and effective (failures, checkpoints and restarts
counted: the goodput columns), ranks the options by effective days and dollars and marks those on the
effective cost-vs-time Pareto frontier (no other option is both faster and cheaper), and reruns the
search for each sensitivity value. :func:`write_report` writes ``summary.md`` (readable without the
tool), ``options.csv``, ``sensitivity.csv`` and the figures ``pareto.png/.svg``, ``scaling.png/.svg``
(ETTR and days against cluster size, per GPU) and ``sensitivity.png/.svg``.

Power (:mod:`cost_model.power`): ``power_mw`` is the job's average facility power, from the GPU's power
while computing, communicating and waiting in the best plan's step; ``peak_power_mw`` is the power while
every GPU computes at once, which a synchronous job reaches every step, so it is what the site must
supply. An option whose cluster's peak exceeds ``site_power_mw`` is not searched: its row has status
``over_power_cap`` and says how many megawatts it needs. Energy is the average power times the
effective time to train (lost work and restarts keep the cluster powered), plus the hot spares the
best plan holds at idle power (the cap is checked before the search chooses spares, so it counts the
cluster's own GPUs only); its cost is that times
``energy_price_usd_per_mwh``, reported beside the GPU-hour cost, not added to it (a rental price per
GPU-hour already includes power; add it yourself for owned clusters).

Every option and sensitivity point is a scenario run by :func:`scenarios.runner.run_task`, so an
option that fits nowhere is a ``no_fit`` row with its reason (the search's explanation), never a failed
study. Everything that can be checked without searching is checked by :func:`load_study` and reported
as one :class:`InputError` line naming the study file's own field (``options[2].cluster``,
``sensitivity[0].values[1]``): the study then stops before any search. A scenario whose search itself
fails is an ``error`` row; :attr:`StudyResult.errors` lists them so the command can fail the study.
"""

from __future__ import annotations

import contextlib

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cost_model.model_loader import ModelInput, build_training, layered_training
from cost_model.params import ParameterCounts
from cost_model.power import cluster_peak_power_mw, idle_power_per_gpu_w, peak_power_per_gpu_w
from hardware.yaml_input import checked_path
from hardware.errors import InputError, did_you_mean, read_yaml_mapping
from hardware.schema import ClusterSpec
from optimizer.ranking import pareto_front
from optimizer.search import Scenario
from optimizer.search_options import SearchOptions

from .identity import stable_hash, tool_version
from .rows import empty_result, typed_frame
from .runner import run_tasks
from .sweep_file import (ScenarioTask, _check_objective, _load_cluster, _load_model, _search_options,
                         _training_section, resolved_columns)
from .sweep_file import _cut as _short_repr  # one way to echo a value in an error line, sweep and study alike

STUDY_KEYS = ("name", "description", "model", "model_name", "price_source", "training", "objective", "top_k",
              "search", "site_power_mw", "energy_price_usd_per_mwh", "options", "sensitivity", "serving")
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


PARAMETER_NAMES = {
    "gpu.memory_gib": "GPU memory (GiB usable per GPU)",
    "gpu.hbm_GBps": "HBM bandwidth (GB/s per GPU)",
    "gpu.peak_tflops_bf16": "peak dense BF16 compute (TFLOP/s per GPU)",
    "gpu.peak_tflops_fp8": "peak dense FP8 compute (TFLOP/s per GPU)",
    "gpu.gemm_efficiency": "BF16 GEMM efficiency (fraction of peak)",
    "gpu.gemm_efficiency_fp8": "FP8 GEMM efficiency (fraction of peak)",
    "gpu.attention_efficiency": "attention kernel efficiency (fraction of peak)",
    "gpu.tdp_w": "GPU board power (W)",
    "topology.scaleup_GBps": "NVLink / scale-up bandwidth (GB/s per GPU per direction)",
    "topology.scaleup_domain_gpus": "scale-up (NVLink) domain (GPUs)",
    "topology.scaleout_oversubscription": "network oversubscription (x; 1 = non-blocking)",
    "topology.nics_per_node": "NICs per node",
    "topology.gpus_per_node": "GPUs per node",
    "economics.price_per_gpu_hour_usd": "price per GPU-hour (US$)",
    "economics.power_per_gpu_w": "power per GPU, host share included (W)",
    "economics.pue": "data-centre PUE",
}
"""Plain-language names, with units, of the cluster fields a sensitivity study is likely to vary; any
other field is named by :func:`parameter_axis` from its own name and unit suffix."""

_UNIT_SUFFIXES = (("_gib", "GiB"), ("_GBps", "GB/s"), ("_gbps", "Gb/s"), ("_us", "µs"), ("_w", "W"), ("_usd", "US$"))


def parameter_axis(parameter: str, cluster: ClusterSpec) -> tuple[str, str, float | None, float]:
    """How a sensitivity parameter reads on a slide: (short name, axis label with unit, the option's own
    value in the file's unit, factor from the file's unit to the axis's). Node counts are drawn as GPU
    counts, since a cluster is bought by the GPU; NIC speeds say how many NICs serve how many GPUs."""
    topology = cluster.topology
    current = _current_value(parameter, cluster)
    if parameter == "topology.num_nodes":
        return ("cluster size", f"cluster size (GPUs; {topology.gpus_per_node} per node)", current,
                float(topology.gpus_per_node))
    if parameter in ("topology.nic_gbps", "topology.nic_GBps"):
        unit = "Gb/s" if parameter.endswith("gbps") else "GB/s"
        share = ("one NIC per GPU" if topology.nics_per_node == topology.gpus_per_node else
                 f"{topology.nics_per_node} NICs per {topology.gpus_per_node}-GPU node")
        return "NIC bandwidth", f"NIC bandwidth ({unit} per NIC; {share})", current, 1.0
    if parameter in PARAMETER_NAMES:
        label = PARAMETER_NAMES[parameter]
        return label.split(" (")[0], label, current, 1.0
    leaf = parameter.split(".")[-1]
    for suffix, unit in _UNIT_SUFFIXES:
        if leaf.endswith(suffix):
            name = leaf[: -len(suffix)].replace("_", " ")
            return name, f"{name} ({unit})", current, 1.0
    name = leaf.replace("_", " ")
    return name, name, current, 1.0


def _current_value(parameter: str, cluster: ClusterSpec) -> float | None:
    """The option's own value of a dotted cluster field (nic_gbps from the stored nic_GBps)."""
    if parameter == "topology.nic_gbps":
        return cluster.topology.nic_GBps * 8
    node: Any = cluster.model_dump()
    for part in parameter.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


@dataclass(frozen=True)
class ServingStudy:
    """The serving fleet of a study: a model (default the study's), a workload and the serving search's
    settings, searched on every cluster option (``serving:`` in the study file)."""

    model_label: str
    model: ModelInput
    workload_label: str
    workload: Any
    objective: str
    top_k: int
    settings: dict[str, Any]


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    source: str
    model_label: str
    model: ModelInput
    model_name: str
    """How reports name the model (the study's ``model_name``, else the model's own name)."""
    price_source: str | None
    """Where the prices come from; None = not said, so reports call them illustrative."""
    training: dict[str, Any]
    options_spec: SearchOptions
    options: tuple[ClusterOption, ...]
    sensitivities: tuple[Sensitivity, ...]
    site_power_mw: float | None = None
    """The site's power supply, MW; options whose cluster draws more at peak are dropped. None = no cap."""
    energy_price_usd_per_mwh: float | None = None
    """US$ per MWh of facility energy; None = energy cost not reported."""
    serving: ServingStudy | None = None
    """A serving fleet priced on every option beside the training run (:mod:`scenarios.serving`)."""


@dataclass
class StudyResult:
    study: Study
    options: pd.DataFrame
    """One row per cluster option: its best plan and what the run costs; ``pareto`` marks the frontier."""
    sensitivity: pd.DataFrame
    """One row per sensitivity point: the parameter's value and the best plan there."""
    plans: pd.DataFrame
    """Every returned plan of every scenario of the study (the tidy table of a sweep)."""
    serving: pd.DataFrame | None = None
    """With a ``serving:`` section: one row per cluster option, the best serving plan there."""

    @property
    def dropped(self) -> list[str]:
        """One line per option or sensitivity point over the site's power cap (not searched)."""
        lines = []
        for part, frame in (("option", self.options), ("sensitivity", self.sensitivity)):
            for _, row in frame[frame["status"] == OVER_POWER_CAP].iterrows():
                where = row["option"] if part == "option" else f"{row['sensitivity']} = {_n(row['value'])}"
                lines.append(f"{where}: {row['reason']}")
        return lines

    @property
    def errors(self) -> list[str]:
        """One line per option or sensitivity point whose search failed (status ``error``): what the
        command reports before failing the study. ``no_fit`` is an answer, not an error."""
        lines = []
        serving = () if self.serving is None else (("serving", self.serving),)
        for part, frame in (("option", self.options), ("sensitivity", self.sensitivity), *serving):
            for _, row in frame[frame["status"] == "error"].iterrows():
                where = (row["option"] if part == "option" else f"serving fleet on {row['option']}" if part == "serving"
                         else f"{row['sensitivity']} = {_n(row['value'])}")
                lines.append(f"{where}: {row['reason']}")
        return lines


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; one-line InputError naming the file and the study's own field.

    Everything a search does not need to find out is checked here, so a bad study stops before the
    first search (exit status 2) instead of after minutes of searching: names and types of every field,
    the model and each option's cluster, every override, and every sensitivity value applied to its
    option's cluster."""
    path = Path(path)
    data = read_yaml_mapping(path)
    source, base = str(path), path.parent
    for key in data:
        if key not in STUDY_KEYS:
            raise InputError(source, str(key), f"unknown key{did_you_mean(str(key), STUDY_KEYS)}",
                             f"known keys: {', '.join(STUDY_KEYS)}")
    for key in ("name", "description", "model_name", "price_source"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise InputError(source, key, f"must be text, got {_short_repr(data[key])}", f"e.g. {key}: ...")
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise InputError(source, "model", "is missing or not a name", "e.g. model: llama3-405b")
    try:
        model = _load_model(data["model"], base, source, 0)
    except InputError as exc:
        raise InputError(source, "model", exc.problem, "use a model preset name or a model file path") from None
    objective = data.get("objective", "throughput")
    _check_objective(objective, source, "objective")
    top_k = data.get("top_k", 5)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(source, "top_k", f"must be a positive whole number, got {_short_repr(top_k)}", "e.g. top_k: 5")
    search_options = _search_options(data.get("search") or {}, source, top_k, objective)
    training = layered_training(model.training_overrides, _training_section(data.get("training") or {}, source))
    try:
        trial = build_training(training, source=f"{source}: training", model=model.spec)
    except InputError as exc:
        field = exc.field if exc.field.startswith("training") else f"training.{exc.field}".rstrip(".")
        raise InputError(source, field, exc.problem, exc.fix) from None
    if trial.train_tokens is None:
        raise InputError(source, "training.train_tokens", "is missing: time-to-train and cost need a token budget",
                         "add e.g. train_tokens: 15.0e+12")
    raw_options = data.get("options")
    if not isinstance(raw_options, list) or not raw_options:
        raise InputError(source, "options", "is missing or empty, or not a list",
                         "list the cluster options to compare, e.g. options: [{name: H100 x 1024, "
                         "cluster: h100x1024, price_per_gpu_hour_usd: 2.5}]")
    options = tuple(_option(raw, i, base, source) for i, raw in enumerate(raw_options))
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise InputError(source, "options", f"option names repeat ({names})", "give each option its own name")
    raw_sensitivity = data.get("sensitivity") or []
    if not isinstance(raw_sensitivity, list):
        raise InputError(source, "sensitivity", "must be a list of studies",
                         "e.g. sensitivity: [{option: H100 x 1024, parameter: topology.nic_gbps, values: [200, 400]}]")
    sensitivities = tuple(_sensitivity(raw, i, names, options, source) for i, raw in enumerate(raw_sensitivity))
    site_power_mw = _positive(data, "site_power_mw", source, "site_power_mw: 150   # megawatts")
    energy_price = _positive(data, "energy_price_usd_per_mwh", source, "energy_price_usd_per_mwh: 80")
    serving = _serving_study(data["serving"], data["model"], model, base, source) if "serving" in data else None
    return Study(name=str(data.get("name") or path.stem), description=str(data.get("description") or ""),
                 source=source, model_label=data["model"], model=model,
                 model_name=str(data.get("model_name") or model.spec.name), price_source=data.get("price_source"),
                 training=training, options_spec=search_options, options=options, sensitivities=sensitivities,
                 site_power_mw=site_power_mw, energy_price_usd_per_mwh=energy_price, serving=serving)


def _serving_study(raw: Any, model_label: str, model: ModelInput, base: Path, source: str) -> ServingStudy:
    """The study's ``serving:`` section: ``workload`` (required), ``model`` (default the study's),
    ``objective`` (default min_gpus with a target load, else cost_per_mtok), ``top_k`` and the serving
    settings of :func:`scenarios.serving.serving_settings`."""
    from .serving import STUDY_SERVING_KEYS, load_workload_entry, serving_settings

    _check_entry(raw, "serving", STUDY_SERVING_KEYS, "serving: {workload: chat-1k-1k, target_rate_per_s: 50}", source)
    if not isinstance(raw.get("workload"), str) or not raw["workload"]:
        raise InputError(source, "serving.workload", "is missing or not a name",
                         "e.g. serving: {workload: chat-1k-1k, target_rate_per_s: 50}")
    workload = load_workload_entry(raw["workload"], base, source, "serving.workload")
    if raw.get("model") is not None:
        if not isinstance(raw["model"], str):
            raise InputError(source, "serving.model", f"must be a model name, got {_short_repr(raw['model'])}",
                             "e.g. model: llama3-70b")
        model_label = raw["model"]
        try:
            model = _load_model(model_label, base, source, 0)
        except InputError as exc:
            raise InputError(source, "serving.model", exc.problem, "use a model preset name or a model file") from None
    settings = serving_settings({k: v for k, v in raw.items() if k not in ("workload", "model", "objective", "top_k")},
                                source, "serving")
    loaded = ("target_rate_per_s" in settings or "target_concurrency" in settings
              or workload.request_rate_per_s is not None or workload.concurrency is not None)
    objective = raw.get("objective", "min_gpus" if loaded else "cost_per_mtok")
    _check_objective(objective, source, "serving.objective", serving=True)
    if objective == "min_gpus" and not loaded:
        raise InputError(source, "serving.objective", "min_gpus needs a load to size the fleet for",
                         "add target_rate_per_s or target_concurrency, or another objective")
    top_k = raw.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(source, "serving.top_k", f"must be a positive whole number, got {_short_repr(top_k)}",
                         "e.g. top_k: 1")
    return ServingStudy(model_label=model_label, model=model, workload_label=raw["workload"], workload=workload,
                        objective=objective, top_k=top_k, settings=settings)


def _positive(data: dict[str, Any], key: str, source: str, example: str) -> float | None:
    """An optional positive, finite number of the study file (None when absent)."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise InputError(source, key, f"must be a positive number, got {_short_repr(value)}", f"e.g. {example}")
    return float(value)


def _check_entry(raw: Any, where: str, known: tuple[str, ...] | list[str], example: str, source: str) -> None:
    """An entry of a list in the study file: a mapping whose keys are all known."""
    if not isinstance(raw, dict):
        raise InputError(source, where, f"must be a mapping, got {_short_repr(raw)}", f"e.g. {example}")
    for key in raw:
        if key not in known:
            raise InputError(source, f"{where}.{key}", f"unknown key{did_you_mean(str(key), known)}",
                             f"known keys: {', '.join(known)}")


def _option(raw: Any, index: int, base: Path, source: str) -> ClusterOption:
    where = f"options[{index}]"
    example = "{name: H100 x 1024, cluster: h100x1024, price_per_gpu_hour_usd: 2.5}"
    _check_entry(raw, where, OPTION_KEYS, example, source)
    for key in ("name", "cluster"):
        if key not in raw:
            raise InputError(source, f"{where}.{key}", "is missing", f"e.g. {example}")
        if not isinstance(raw[key], (str, int, float)) or isinstance(raw[key], bool) or not str(raw[key]).strip():
            raise InputError(source, f"{where}.{key}", f"must be a name, got {_short_repr(raw[key])}",
                             f"e.g. {example}")
    raw_overrides = raw.get("overrides") or {}
    if not isinstance(raw_overrides, dict) or not all(isinstance(k, str) for k in raw_overrides):
        raise InputError(source, f"{where}.overrides",
                         f"must be a mapping of dotted cluster fields to values, got {_short_repr(raw_overrides)}",
                         "e.g. overrides: {topology.nic_gbps: 800}")
    overrides = dict(raw_overrides)
    if "price_per_gpu_hour_usd" in raw:
        price = raw["price_per_gpu_hour_usd"]
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not (0 < price < math.inf):
            raise InputError(source, f"{where}.price_per_gpu_hour_usd",
                             f"must be a positive number of US dollars, got {_short_repr(price)}",
                             "e.g. price_per_gpu_hour_usd: 2.5")
        overrides[PRICE_FIELD] = price
    try:
        cluster = _load_cluster(str(raw["cluster"]), base, source, index)
    except InputError as exc:
        raise InputError(source, f"{where}.cluster", exc.problem, "use a cluster preset such as h100x1024 or a "
                         "cluster file path") from None
    try:
        cluster = cluster.with_overrides(overrides, source=source)
    except InputError as exc:
        field = "price_per_gpu_hour_usd" if exc.field == PRICE_FIELD else f"overrides.{exc.field}"
        raise InputError(source, f"{where}.{field}", exc.problem, exc.fix) from None
    if cluster.economics.price_per_gpu_hour_usd is None:
        raise InputError(source, f"{where}.price_per_gpu_hour_usd", "is missing: the study compares dollars",
                         "add e.g. price_per_gpu_hour_usd: 2.5")
    return ClusterOption(name=str(raw["name"]), cluster_label=str(raw["cluster"]), cluster=cluster,
                         overrides=overrides)


def _sensitivity(raw: Any, index: int, names: list[str], options: tuple[ClusterOption, ...],
                 source: str) -> Sensitivity:
    where = f"sensitivity[{index}]"
    _check_entry(raw, where, SENSITIVITY_KEYS,
                 "{option: H100 x 1024, parameter: topology.nic_gbps, values: [200, 400]}", source)
    option = raw.get("option")
    if option not in names:
        raise InputError(source, f"{where}.option", f"unknown option {_short_repr(option)}"
                         f"{did_you_mean(str(option), names)}", f"use one of: {', '.join(names)}")
    parameter = raw.get("parameter")
    if not isinstance(parameter, str) or not parameter:
        raise InputError(source, f"{where}.parameter", f"must be a dotted cluster field, got {_short_repr(parameter)}",
                         "e.g. parameter: topology.nic_gbps")
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        raise InputError(source, f"{where}.values", "is missing, empty or not a list", "list the values to try")
    base = options[names.index(option)].cluster
    for j, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError(source, f"{where}.values[{j}]", f"must be a finite number, got {_short_repr(value)}",
                             "e.g. values: [200, 400, 800]")
        try:  # every value now: a bad one is the file's error, found before any search runs
            base.with_overrides({parameter: value}, source=source)
        except InputError as exc:
            if exc.problem.startswith("unknown field"):
                raise InputError(source, f"{where}.parameter", exc.problem, exc.fix) from None
            raise InputError(source, f"{where}.values[{j}]", f"{parameter} = {_short_repr(value)}: {exc.problem}",
                             exc.fix) from None
    if len(set(values)) != len(values):
        raise InputError(source, f"{where}.values", f"repeats a value ({_short_repr(values)})", "list each value once")
    return Sensitivity(option=option, parameter=parameter, values=tuple(values))


def _tasks(study: Study) -> tuple[list[ScenarioTask], dict[int, str]]:
    """The option scenarios first, then each sensitivity point's, in file order; and the reason each
    point over the site's power cap is not searched (by scenario index)."""
    tasks = []
    over_cap: dict[int, str] = {}
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
            reason = over_power_cap(cluster, study.site_power_mw)
            if reason:
                over_cap[index] = reason
        params = {"study": study.name, "scenario_index": index, "part": part, "option": option,
                  "sensitivity": study_label, "value": value, "tool_version": tool_version(),
                  "inputs_hash": stable_hash({"scenario": scenario, "error": error, "version": tool_version()}),
                  "model": study.model_label, "cluster": by_name[option].cluster_label}
        params.update(resolved_columns(scenario, study.model, {}, study.options_spec.objective))
        tasks.append(ScenarioTask(index=index, params=params, scenario=scenario, error=error, explain=True))
    if study.serving is not None:
        tasks += _serving_tasks(study, len(tasks))
    return tasks, over_cap


def _serving_tasks(study: Study, first_index: int) -> list[ScenarioTask]:
    """One serving search per cluster option (part ``serving``), after the training scenarios; a fleet
    that cannot be searched on an option (FP8 on an A100, a budget over the cluster) is its error row."""
    from .serving import serving_scenario

    serving = study.serving
    tasks = []
    for offset, option in enumerate(study.options):
        scenario, error = None, None
        try:
            scenario = serving_scenario(serving.model.spec, option.cluster, serving.workload, serving.settings,
                                        serving.objective, serving.top_k, model_source=serving.model_label)
        except (InputError, ValueError) as exc:
            error = str(exc)
        params = {"study": study.name, "scenario_index": first_index + offset, "part": "serving", "option": option.name,
                  "sensitivity": None, "value": None, "tool_version": tool_version(),
                  "inputs_hash": stable_hash({"scenario": scenario, "error": error, "version": tool_version()}),
                  "model": serving.model_label, "cluster": option.cluster_label}
        params.update(resolved_columns(None, serving.model, {}, serving.objective))
        cl = option.cluster
        params.update(gpu=cl.gpu.name, num_nodes=cl.topology.num_nodes, num_gpus=cl.num_gpus,
                      gpu_memory_gib=cl.gpu.memory_gib, nic_gbps=cl.topology.nic_GBps * 8,
                      price_per_gpu_hour_usd=cl.economics.price_per_gpu_hour_usd)
        tasks.append(ScenarioTask(index=first_index + offset, params=params, scenario=scenario, error=error,
                                  explain=True))
    return tasks


OVER_POWER_CAP = "over_power_cap"
"""Status of an option (or sensitivity point) whose cluster draws more than the site's power cap."""


def over_power_cap(cluster: ClusterSpec, site_power_mw: float | None) -> str | None:
    """Why a cluster cannot run on the site, or None: every GPU of a synchronous job computes at once,
    so the site must carry the cluster's peak (:func:`cost_model.power.cluster_peak_power_mw`)."""
    if site_power_mw is None:
        return None
    peak = cluster_peak_power_mw(cluster)
    if not peak > site_power_mw:
        return None
    per_gpu = peak_power_per_gpu_w(cluster)
    return (f"needs {_mw(peak)} MW while every GPU computes ({cluster.num_gpus:,} GPUs x {per_gpu:,.0f} W with "
            f"host share and PUE {cluster.economics.pue:g}), over the site's {_mw(site_power_mw)} MW "
            f"(site_power_mw); not searched")


def _mw(value: float) -> str:
    """Megawatts to a tenth, or three significant figures for a small cluster (0.0204 MW)."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def run_study(study: Study, workers: int | None = None) -> StudyResult:
    """Search every option and sensitivity point within the site's power; build the option, sensitivity
    and plan tables."""
    tasks, over_cap = _tasks(study)
    searched = [task for task in tasks if task.index not in over_cap]
    results = {index: [empty_result(OVER_POWER_CAP, reason, "site_power_mw")] for index, reason in over_cap.items()}
    # closing: a Ctrl-C or an error while results arrive kills the pool's workers at once
    with contextlib.closing(run_tasks(searched, workers)) as finished:
        results.update({task.index: rows for task, rows in finished})
    rows = [{**task.params, **row} for task in tasks for row in results[task.index]]
    plans = typed_frame(rows, list(tasks[0].params))
    best = plans[plans["rank"].isna() | (plans["rank"] == 1)]
    clusters = [task.scenario.cluster if task.scenario is not None else None for task in tasks]
    options = _with_power(best[best["part"] == "option"], clusters, study)
    ok = (options["status"] == "ok").to_numpy()
    pareto = np.zeros(len(options), dtype=bool)
    if ok.any():
        index = np.flatnonzero(ok)
        front = pareto_front(options.loc[ok, "effective_time_to_train_days"].to_numpy(float),
                             options.loc[ok, "effective_cost_usd"].to_numpy(float))
        pareto[index[front]] = True
    options["pareto"] = pareto
    options["option_rank"] = _ranks(options)
    sensitivity = _with_power(best[best["part"] == "sensitivity"], clusters, study)
    sensitivity["study"] = sensitivity["sensitivity"]
    base_plan = dict(zip(options["option"], options["plan"]))
    sensitivity["plan_changed"] = [None if status != "ok" else plan != base_plan.get(option)
                                   for status, plan, option in zip(sensitivity["status"], sensitivity["plan"],
                                                                   sensitivity["option"])]
    serving = None
    if study.serving is not None:
        serving = best[best["part"] == "serving"].reset_index(drop=True)
    return StudyResult(study=study, options=options, sensitivity=sensitivity, plans=plans, serving=serving)


def _with_power(rows: pd.DataFrame, clusters: list[ClusterSpec | None], study: Study) -> pd.DataFrame:
    """The best-plan rows with what the site sees: the cluster's peak power (also for rows that were not
    searched), the energy over the effective time to train and its cost."""
    rows = rows.reset_index(drop=True).copy()
    peak = [cluster_peak_power_mw(clusters[i]) if clusters[i] is not None else math.nan
            for i in rows["scenario_index"]]
    rows["peak_power_mw"] = rows["peak_power_mw"].fillna(pd.Series(peak, index=rows.index, dtype=float))
    # lost work and restarts keep the cluster powered: energy runs for the effective time; hot spares
    # (goodput's spare_gpus) wait beside the job at idle power
    idle_w = pd.Series([idle_power_per_gpu_w(clusters[i]) if clusters[i] is not None else math.nan
                        for i in rows["scenario_index"]], index=rows.index, dtype=float)
    spare_mw = rows["spare_gpus"].fillna(0.0) * idle_w / 1e6
    rows["effective_energy_mwh"] = (rows["power_mw"] + spare_mw) * rows["effective_time_to_train_days"] * 24
    price = study.energy_price_usd_per_mwh
    rows["energy_cost_usd"] = rows["effective_energy_mwh"] * price if price is not None else math.nan
    return rows


def _ranks(options: pd.DataFrame) -> list[Any]:
    """1 = the option that trains soonest, counting failures and restarts; ties go to the cheaper one.
    Options without a plan are not ranked."""
    ok = options[options["status"] == "ok"]
    order = ok.sort_values(["effective_time_to_train_days", "effective_cost_usd"], kind="stable").index
    ranks = {index: position for position, index in enumerate(order, start=1)}
    return [ranks.get(index) for index in options.index]


GOODPUT_TABLE = ("ettr", "effective_time_to_train_days", "effective_gpu_hours", "effective_cost_usd")
POWER_TABLE = ("gpu_power_w", "power_mw", "peak_power_mw", "energy_mwh", "effective_energy_mwh", "energy_cost_usd")
OPTION_TABLE = ("option_rank", "option", "num_gpus", "gpu", "price_per_gpu_hour_usd", "status", "plan",
                "tokens_per_s", "mfu", "memory_gib", "time_to_train_days", "gpu_hours", "cost_usd", *GOODPUT_TABLE,
                *POWER_TABLE, "pareto", "reason")
SERVING_TABLE = ("option", "num_gpus", "gpu", "price_per_gpu_hour_usd", "status", "plan", "plan_num_gpus",
                 "min_gpus_for_target", "output_tokens_per_s_per_gpu", "tokens_per_s_per_user",
                 "goodput_requests_per_s_per_gpu", "ttft_ms_p99", "tpot_ms_p99", "cost_usd_per_m_output_tokens",
                 "cost_usd_per_m_input_tokens", "bottleneck", "binding_constraint", "reason")
"""serving.csv: the best serving plan of each option (:mod:`scenarios.serving`)."""
SENSITIVITY_TABLE = ("sensitivity", "option", "value", "status", "plan", "plan_changed", "tokens_per_s", "mfu",
                     "memory_gib", "time_to_train_days", "gpu_hours", "cost_usd", *GOODPUT_TABLE, *POWER_TABLE,
                     "reason")


def write_report(result: StudyResult, out_dir: str | Path) -> list[Path]:
    """summary.md, options.csv, sensitivity.csv, plans.parquet and the figures, into ``out_dir``."""
    from .plots import SensitivityAxis, pareto_plot, scaling_plot, sensitivity_plot  # matplotlib: only here

    out = checked_path(out_dir, "--out")
    if out.exists() and not out.is_dir():
        raise InputError(out, "", "is a file, not a directory", "pass a directory for --out")
    out.mkdir(parents=True, exist_ok=True)
    study = result.study
    paths = []
    result.options[list(OPTION_TABLE)].to_csv(out / "options.csv", index=False)
    paths.append(out / "options.csv")
    result.plans.to_parquet(out / "plans.parquet", index=False)
    paths.append(out / "plans.parquet")
    paths += pareto_plot(result.options, out / "pareto", f"{study.model_name}: cost vs time to train per cluster option",
                         subtitle=run_description(study) + "; best plan of each option")
    paths += scaling_plot(result.options, out / "scaling", f"{study.model_name}, {run_description(study)}: "
                          "what more GPUs buy", site_power_mw=study.site_power_mw)
    if len(result.sensitivity):
        result.sensitivity[list(SENSITIVITY_TABLE)].to_csv(out / "sensitivity.csv", index=False)
        paths.append(out / "sensitivity.csv")
        by_name = {o.name: o for o in study.options}
        axes = []
        for sens in study.sensitivities:
            name, label, current, scale = parameter_axis(sens.parameter, by_name[sens.option].cluster)
            axes.append(SensitivityAxis(study=sens.label, title=f"{name} on {sens.option}", label=label,
                                        current=current, scale=scale))
        paths += sensitivity_plot(result.sensitivity, axes, out / "sensitivity",
                                  f"{study.model_name}, {run_description(study)}: what one change to a cluster does")
    if result.serving is not None:
        result.serving[[c for c in SERVING_TABLE if c in result.serving]].to_csv(out / "serving.csv", index=False)
        paths.append(out / "serving.csv")
    (out / "summary.md").write_text(summary_markdown(result), encoding="utf-8")
    paths.append(out / "summary.md")
    return paths


def run_description(study: Study) -> str:
    """The run in a few words, for figure titles: '15T tokens, 8K context, 16.8M-token batches'."""
    tr = build_training(study.training, source=study.source)
    context = f"{tr.seq_length // 1024}K" if tr.seq_length % 1024 == 0 else f"{tr.seq_length:,}"
    return (f"{_tokens(tr.train_tokens)} tokens, {context} context, "
            f"{tr.global_batch_tokens / 1e6:,.1f}M-token batches, {tr.precision}")


def _tokens(count: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if count >= scale:
            return f"{count / scale:,.3g}{suffix}"
    return f"{count:,.0f}"


def summary_markdown(result: StudyResult) -> str:
    """The study as Markdown a person can read without the tool: inputs, options, frontier, sensitivity."""
    study, options = result.study, result.options
    tr = build_training(study.training, source=study.source)
    counts = ParameterCounts(study.model.spec)
    lines = [f"# What-if study: {study.name}", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    lines += [
        f"**Model** {study.model_name} ({counts.total / 1e9:,.1f}B parameters, "
        + ("dense" if counts.active == counts.total else f"{counts.active / 1e9:,.1f}B active per token")
        + f"). **Run** {tr.train_tokens / 1e12:,.3g}T tokens at sequence length {tr.seq_length:,}, "
        f"global batch {tr.global_batch_size:,} sequences ({tr.global_batch_tokens / 1e6:,.1f}M tokens), {tr.precision}. "
        f"**Best plan** of each option chosen by {study.options_spec.objective}, among every TP/PP/DP/CP/EP layout, "
        f"micro-batch, virtual pipeline, recompute, SP and ZeRO setting that fits in "
        f"{1 - study.options_spec.memory_headroom:.0%} of GPU memory.",
        "",
        f"Generated by plan-search {tool_version()} from `{Path(study.source).name}`. "
        "Cost = GPU-hours x price. **Effective** days, GPU-hours and cost count failures, checkpoints and "
        "restarts; ETTR = nominal / effective time (the share of wall-clock time that trains). The options are "
        "ranked by effective days, then effective cost.",
        "",
        *_power_lines(study),
        "",
        *_price_lines(study),
        "",
        *accuracy_lines(study),
        "",
        "## Cluster options",
        "",
        "| rank | option | GPUs | $/GPU-h | best plan | MFU | days | ETTR | effective days | effective cost $M "
        "| MW | peak MW | MWh | energy $M | frontier |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    ranked = options.assign(_order=options["option_rank"].fillna(len(options) + 1)).sort_values("_order", kind="stable")
    for _, row in ranked.iterrows():
        if row["status"] != "ok":
            peak = _opt(row["peak_power_mw"], "{:,.1f}")
            lines.append(f"| | {row['option']} | {_n(row['num_gpus'])} | {_money(row['price_per_gpu_hour_usd'])} | "
                         f"{_status_cell(row)} | | | | | | | {peak} | | | |")
            continue
        lines.append(
            f"| {_n(row['option_rank'])} | {row['option']} | {_n(row['num_gpus'])} | "
            f"{_money(row['price_per_gpu_hour_usd'])} | `{row['plan']}` | {row['mfu']:.1%} | "
            f"{row['time_to_train_days']:.1f} | {row['ettr']:.1%} | {row['effective_time_to_train_days']:.1f} | "
            f"{row['effective_cost_usd'] / 1e6:.2f} | {_opt(row['power_mw'], '{:,.1f}')} | "
            f"{_opt(row['peak_power_mw'], '{:,.1f}')} | {_opt(row['effective_energy_mwh'], '{:,.0f}')} | "
            f"{_opt(row['energy_cost_usd'] / 1e6, '{:.2f}')} | {'yes' if row['pareto'] else ''} |")
    lines += ["", *_no_fit_lines(options, "option"), "## Cost vs time", ""]
    lines += _frontier_lines(options)
    lines += ["", "![cost vs time to train](pareto.png)", "", "## What more GPUs buy", ""]
    lines += _scaling_lines(options)
    lines += ["", "![ETTR and days against cluster size](scaling.png)", ""]
    if len(result.sensitivity):
        lines += ["## Sensitivity", "",
                  "Each study reruns the search on one option with one parameter changed; `plan changed` compares "
                  "the best plan with that option's best plan above.", ""]
        for label in dict.fromkeys(result.sensitivity["sensitivity"]):
            rows = result.sensitivity[result.sensitivity["sensitivity"] == label]
            lines += [f"### {label}", "",
                      "| value | best plan | plan changed | tokens/s | MFU | memory GiB | days | cost $M | ETTR "
                      "| effective days | effective cost $M |",
                      "|---:|---|:---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for _, row in rows.iterrows():
                if row["status"] != "ok":
                    lines.append(f"| {_n(row['value'])} | {_status_cell(row)} | | | | | | | | | |")
                    continue
                lines.append(f"| {_n(row['value'])} | `{row['plan']}` | {'yes' if row['plan_changed'] else 'no'} | "
                             f"{row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | {row['memory_gib']:.1f} | "
                             f"{row['time_to_train_days']:.1f} | {row['cost_usd'] / 1e6:.2f} | {row['ettr']:.1%} | "
                             f"{row['effective_time_to_train_days']:.1f} | {row['effective_cost_usd'] / 1e6:.2f} |")
            lines += ["", *_sensitivity_sentence(rows), "", *_no_fit_lines(rows, "value")]
        lines += ["![sensitivity](sensitivity.png)", ""]
    if result.serving is not None:
        lines += _serving_lines(result)
    sensitivity = len(result.sensitivity) > 0
    lines += ["## Files", "",
              ("`options.csv` and `sensitivity.csv` hold these tables" if sensitivity else "`options.csv` holds the "
               "table") + "; `plans.parquet` every returned plan with its memory, time and communication "
              "breakdowns; " + ("`pareto.svg`, `scaling.svg` and `sensitivity.svg` are the figures" if sensitivity
                                else "`pareto.svg` and `scaling.svg` are the figures") + " as vector graphics.", ""]
    return "\n".join(lines)


def _serving_lines(result: StudyResult) -> list[str]:
    """The serving fleet's section: the best serving plan on each option and what it costs (every GPU)."""
    serving = result.study.serving
    load = serving.settings.get("target_rate_per_s") or serving.workload.request_rate_per_s
    concurrency = serving.settings.get("target_concurrency") or serving.workload.concurrency
    target = (f"{load:g} requests/s" if load else f"{concurrency:g} requests in flight" if concurrency
              else "max load")
    lines = ["## Serving fleet", "",
             f"**Model** {serving.model.spec.name}, **workload** {serving.workload.describe()}, **target** {target}. "
             f"Best plan of each option by {serving.objective} (`plan-search serve`), within each option's cluster; "
             "$ per million tokens counts every GPU of the plan, prefill and decode.", "",
             "| option | best serving plan | GPUs | GPUs for the target | output tok/s/GPU | tok/s/user | TTFT p99 ms "
             "| TPOT p99 ms | $/M output tokens | bottleneck |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for _, row in result.serving.iterrows():
        if row["status"] != "ok":
            lines.append(f"| {row['option']} | {_status_cell(row)} | | | | | | | | |")
            continue
        lines.append(f"| {row['option']} | `{row['plan']}` | {_n(row['plan_num_gpus'])} | "
                     f"{_opt(row['min_gpus_for_target'], '{:,.0f}')} | {_opt(row['output_tokens_per_s_per_gpu'], '{:,.0f}')} | "
                     f"{_opt(row['tokens_per_s_per_user'], '{:,.1f}')} | {_opt(row['ttft_ms_p99'], '{:,.0f}')} | "
                     f"{_opt(row['tpot_ms_p99'], '{:.1f}')} | {_opt(row['cost_usd_per_m_output_tokens'], '${:.2f}')} | "
                     f"{row['bottleneck']} |")
    return lines + ["", "`serving.csv` holds this table.", ""]


def _status_cell(row: pd.Series) -> str:
    """A row without a plan says why in the table itself (the whole explanation follows the table)."""
    reason = str(row["reason"]) if isinstance(row["reason"], str) else "no reason recorded"
    if row["status"] == "no_fit":
        return f"**no plan fits**: {reason.split('; what would fit')[0]}"
    if row["status"] == OVER_POWER_CAP:
        return f"**dropped, over the site's power cap**: {reason}"
    return f"**search failed**: {reason}"


def _power_lines(study: Study) -> list[str]:
    """How power and energy are counted, the site's cap and the energy price."""
    lines = ["**Power** (`cost_model.power`): MW is the job's average facility power, from each GPU's power while "
             "computing (its TDP x power_compute_fraction), communicating and waiting in pipeline bubbles (lower "
             "fractions of TDP, cited in the GPU presets) over the best plan's step, plus the rest of the node "
             "(the all-in power per GPU less TDP) and the PUE; peak MW is every GPU computing at once, which a "
             "synchronous job reaches every step. MWh = average MW x effective time to train."]
    if study.site_power_mw is not None:
        lines.append(f"**Site power cap** {_mw(study.site_power_mw)} MW (`site_power_mw`): an option whose "
                     "peak exceeds it is dropped, not searched.")
    if study.energy_price_usd_per_mwh is not None:
        lines.append(f"**Energy** at ${study.energy_price_usd_per_mwh:,.2f}/MWh (`energy_price_usd_per_mwh`), shown "
                     "beside the GPU-hour cost and not added to it: a rental price per GPU-hour already includes "
                     "power; add it for owned clusters.")
    return [" ".join(lines)]


def _scaling_lines(options: pd.DataFrame) -> list[str]:
    """Per GPU type with more than one size: what each step up in size buys, counting failures."""
    from .plots import scaling_efficiency

    ok = options[options["status"] == "ok"].sort_values("num_gpus", kind="stable")
    lines = []
    for gpu, rows in ok.groupby("gpu", sort=False):
        if len(rows) < 2:
            continue
        steps = []
        previous = None
        for _, row in rows.iterrows():
            if previous is not None:
                share = scaling_efficiency(previous["num_gpus"], previous["effective_time_to_train_days"],
                                           row["num_gpus"], row["effective_time_to_train_days"])
                steps.append(f"{_n(previous['num_gpus'])} to {_n(row['num_gpus'])} GPUs: "
                             f"{previous['effective_time_to_train_days']:.1f} to "
                             f"{row['effective_time_to_train_days']:.1f} effective days "
                             f"({share:.0%} of the ideal speed-up; ETTR {previous['ettr']:.1%} to {row['ettr']:.1%})")
            previous = row
        best = rows.loc[rows["effective_time_to_train_days"].idxmin()]
        lines.append(f"* **{gpu}**: " + "; ".join(steps) + f". Shortest effective time at {_n(best['num_gpus'])} GPUs.")
    capped = options[options["status"] == OVER_POWER_CAP]
    if len(capped):
        lines.append("* Over the site's power cap, not searched: " + ", ".join(capped["option"]) + ".")
    return lines or ["No GPU type is offered at more than one size."]


def _price_lines(study: Study) -> list[str]:
    """Where the prices come from, said every time: the ranking of the options depends on them."""
    if study.price_source:
        return [f"**Prices** per GPU-hour: {study.price_source.strip()} (as the study file states). The ranking "
                "of the options depends on them."]
    return ["**Prices are illustrative**: the study file does not say where its per-GPU-hour prices come from "
            "(add `price_source:` when they are real offers). Replace them with your own; the ranking of the "
            "options depends on them."]


def accuracy_lines(study: Study) -> list[str]:
    """How far to trust the times, per GPU of the study, from the tool's cross-validated calibration
    (``plan-search calibrate``): a GPU whose GEMM efficiencies are the fitted values of its generation
    gets the band of comparable published runs (same stack, GPU generation and model class), each
    predicted by a fit that never saw its source (:mod:`cost_model.calibration.bands`); any other GPU
    is flagged as not calibrated."""
    training = build_training(study.training, source=study.source)
    seen: dict[str, str] = {}
    for option in study.options:
        gpu = option.cluster.gpu
        if gpu.name not in seen:
            seen[gpu.name] = _gpu_accuracy(gpu, study.model.spec, training)
    return ["**How far to trust the times.** Time and throughput are model predictions, not measurements; "
            "the band is where 80% of comparable published runs fall relative to the prediction when their "
            "source is left out of the fit (`plan-search calibrate`, `plan-search validate`).", "", *seen.values()]


def _gpu_accuracy(gpu: Any, model: Any, training: Any) -> str:
    from cost_model.calibration.bands import band_for_run, gpu_family
    from cost_model.calibration.calibrate import fitted_efficiencies

    family = gpu_family(gpu)
    fitted = fitted_efficiencies(family)
    precision_key = "gemm_efficiency_fp8" if training.precision == "fp8" else "gemm_efficiency"
    if not fitted or fitted.get(precision_key) is None or getattr(gpu, precision_key) is None or \
            abs(getattr(gpu, precision_key) - fitted[precision_key]) > 1.5e-3:
        return (f"* **{gpu.name}**: **not calibrated** (its {precision_key} is not the value fitted on published "
                f"{family} runs): treat its times as rough estimates.")
    head = f"* **{gpu.name}**: calibrated ({precision_key} fitted on published runs of {family} GPUs)"
    band = band_for_run(model, training, gpu)
    if band is None:
        return f"{head}; too few comparable published runs for an error band."
    low, high = band.low_factor - 1, band.high_factor - 1
    return (f"{head}; measured throughput of 80% of comparable published runs was {low:+.0%} to {high:+.0%} of the "
            f"prediction, each predicted without its source ({band.label}, {band.rows} runs).")


def _frontier_lines(options: pd.DataFrame) -> list[str]:
    ok = options[options["status"] == "ok"]
    if ok.empty:
        return ["No option has a plan that fits."]
    front = ok[ok["pareto"]].sort_values("effective_time_to_train_days")
    fastest = ok.loc[ok["effective_time_to_train_days"].idxmin()]
    cheapest = ok.loc[ok["effective_cost_usd"].idxmin()]
    lines = ["Effective days and cost (failures, checkpoints and restarts counted).", "",
             f"Fastest: **{fastest['option']}**, {fastest['effective_time_to_train_days']:.1f} days for "
             f"${fastest['effective_cost_usd'] / 1e6:.2f}M. Cheapest: **{cheapest['option']}**, "
             f"${cheapest['effective_cost_usd'] / 1e6:.2f}M in {cheapest['effective_time_to_train_days']:.1f} days.", "",
             "On the frontier (no other option is both faster and cheaper), fastest first: "
             + "; ".join(f"{r['option']} ({r['effective_time_to_train_days']:.1f} days, ${r['effective_cost_usd'] / 1e6:.2f}M)"
                         for _, r in front.iterrows()) + "."]
    dominated = ok[~ok["pareto"]]
    for _, row in dominated.iterrows():
        better = front[(front["effective_time_to_train_days"] <= row["effective_time_to_train_days"])
                       & (front["effective_cost_usd"] <= row["effective_cost_usd"])]
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
    """The whole explanation of each row without a plan: what binds and what would fit (no_fit), or the
    error of a failed search."""
    said = {"no_fit": "nothing fits: ", OVER_POWER_CAP: "dropped, over the site's power cap: "}
    lines = [f"* {_n(row[key])}: " + said.get(row["status"], "the search failed: ") + str(row["reason"])
             for _, row in rows.iterrows() if row["status"] != "ok"]
    return (["Where no plan was found, or an option was dropped:", "", *lines, ""] if lines else [])


def _n(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _money(value: Any) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def _opt(value: Any, fmt: str) -> str:
    return "-" if value is None or pd.isna(value) else fmt.format(value)
