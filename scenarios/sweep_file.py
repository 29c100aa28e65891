"""Read a sweep file and expand its axes into scenarios.

A sweep file names the axes to cross; every combination is one scenario, searched independently::

    name: nightly
    top_k: 3                       # plans kept per scenario (default 3)
    objective: throughput          # default objective; may also be an axis
    explain: true                  # explain scenarios where nothing fits (default true)
    training: {tp_comm_overlap: false}       # fixed training settings (any model.yaml training field)
    search: {zero_stages: [0, 1, 2, 3]}      # fixed SearchOptions fields (memory_headroom, recompute_modes, ...)
    axes:
      model: [llama3-8b, mixtral-8x7b, my-model.yaml]    # presets or files (relative to this file)
      cluster: [h100x64, h200x64, my-cluster.yaml]       # presets or files
      seq_length: [4096, 8192]
      global_batch_tokens: [4194304]                     # or global_batch_size (sequences), not both
      train_tokens: [1.0e+12]
      precision: [bf16]
      objective: [throughput]
      overrides:                                         # cluster fields, dotted as in ClusterSpec.with_overrides
        topology.nic_gbps: [200, 400]
        economics.price_per_gpu_hour_usd: [2.5]

Expansion is the cartesian product in a fixed order (model, cluster, each override in file order, then
the training axes, then the objective), so the same file always gives the same scenarios in the same
order. A single value may be written without brackets.

What is checked here, before anything runs, and reported as one :class:`InputError` line naming the
sweep file and the field: an unknown top-level key or axis (with a did-you-mean), an empty axis or a
sweep without model or cluster, an unknown model or cluster preset or a missing file, an unknown
override field, a value of the wrong type, an unknown objective or search option. What can only fail
for some combinations (a global batch that is not a whole number of sequences for one sequence
length, a node count that does not fill NVL72 racks) becomes an ``error`` row of that scenario; a
scenario where nothing fits becomes a ``no_fit`` row with the binding constraint.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardware.yaml_input import names_existing_file
from cost_model.model_loader import ModelInput, build_training, layered_training, load_model, training_overrides
from hardware.errors import InputError, did_you_mean, read_yaml_mapping
from hardware.loader import load_cluster
from hardware.schema import ClusterSpec, _set_dotted
from optimizer.search import Scenario
from optimizer.search_options import OBJECTIVES, SearchOptions

from .identity import stable_hash, tool_version

TOP_LEVEL_KEYS = ("name", "description", "top_k", "objective", "explain", "training", "search", "serving", "axes")
LABEL_AXES = ("model", "cluster")
TRAINING_AXES = ("seq_length", "global_batch_tokens", "global_batch_size", "train_tokens", "precision")
AXES = LABEL_AXES + ("overrides",) + TRAINING_AXES + ("workload", "objective")
"""``workload`` makes the sweep a serving sweep (:mod:`scenarios.serving`): each scenario a serving search."""
# SearchOptions fields a sweep may fix; gpu_counts, top_k and objective have their own keys.
SEARCH_KEYS = tuple(f.name for f in dataclasses.fields(SearchOptions)
                    if f.name not in ("gpu_counts", "top_k", "objective"))
_INT_AXES = ("seq_length", "global_batch_tokens", "global_batch_size")
DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file."""

    name: str
    source: str
    """The file it came from, for error messages."""
    top_k: int
    explain: bool
    options: SearchOptions
    """Search options shared by every scenario (the objective axis may change ``objective``)."""
    training: dict[str, Any]
    """Fixed training settings, applied over each model file's own ``training:`` section."""
    axes: dict[str, tuple[Any, ...]]
    """Label and training axes (and ``objective``), in expansion order; absent axes are left out."""
    overrides: dict[str, tuple[Any, ...]]
    """Cluster override axes: dotted field -> values, in file order."""
    models: dict[str, ModelInput] = field(repr=False, default_factory=dict)
    clusters: dict[str, ClusterSpec] = field(repr=False, default_factory=dict)
    serving: dict[str, Any] | None = None
    """A serving sweep's fixed settings (:func:`scenarios.serving.serving_settings`); None for training."""
    workloads: dict[str, Any] = field(repr=False, default_factory=dict)
    """A serving sweep's workloads by label."""

    @property
    def num_scenarios(self) -> int:
        count = 1
        for values in list(self.axes.values()) + list(self.overrides.values()):
            count *= len(values)
        return count


@dataclass(frozen=True)
class ScenarioTask:
    """One expanded scenario: its table columns, and the search problem (None when it cannot be built)."""

    index: int
    params: dict[str, Any]
    """The scenario's columns in the result table (identities, axis values, resolved cluster figures)."""
    scenario: Scenario | None
    error: str | None
    """Why the scenario could not be built (then ``scenario`` is None)."""
    explain: bool

    @property
    def scenario_id(self) -> str:
        return self.params["scenario_id"]

    @property
    def inputs_hash(self) -> str:
        return self.params["inputs_hash"]


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file (see the module docstring); raises InputError on bad input."""
    path = Path(path)
    data = read_yaml_mapping(path)
    return sweep_from_mapping(data, source=str(path), base_dir=path.parent)


def sweep_from_mapping(data: dict[str, Any], source: str = "sweep", base_dir: Path | None = None) -> SweepSpec:
    """Validate a parsed sweep mapping; model and cluster paths are taken relative to ``base_dir``."""
    base_dir = base_dir or Path(".")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise InputError(source, str(key), f"unknown key{did_you_mean(str(key), TOP_LEVEL_KEYS)}",
                             f"known keys: {', '.join(TOP_LEVEL_KEYS)}")
    name = str(data.get("name") or Path(source).stem)
    top_k = data.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(source, "top_k", f"must be a positive whole number, got {top_k!r}", "e.g. top_k: 3")
    explain = data.get("explain", True)
    if not isinstance(explain, bool):
        raise InputError(source, "explain", f"must be true or false, got {explain!r}", "write explain: true")
    axes_data = data.get("axes")
    if not isinstance(axes_data, dict) or not axes_data:
        raise InputError(source, "axes", "is missing or empty: the sweep has no scenarios",
                         "add e.g. 'axes: {model: [llama3-8b], cluster: [h100x64]}'")
    serving = "workload" in axes_data
    _check_serving_sections(data, axes_data, serving, source)
    objective = data.get("objective", "goodput_per_gpu" if serving else "throughput")
    _check_objective(objective, source, "objective", serving)
    options = _search_options(data.get("search") or {}, source, top_k, "throughput" if serving else objective)
    training = _training_section(data.get("training") or {}, source)
    for key in axes_data:
        if key not in AXES:
            raise InputError(source, f"axes.{key}", f"unknown axis{did_you_mean(str(key), AXES)}",
                             f"known axes: {', '.join(AXES)}; cluster fields go under axes.overrides")
    if "global_batch_tokens" in axes_data and "global_batch_size" in axes_data:
        raise InputError(source, "axes.global_batch_size", "both global_batch_tokens and global_batch_size are axes",
                         "keep one: tokens per step, or sequences per step")
    for required in LABEL_AXES:
        if required not in axes_data:
            raise InputError(source, f"axes.{required}", "is missing", f"add e.g. axes.{required}: "
                             + ("[llama3-8b]" if required == "model" else "[h100x64]"))

    axes: dict[str, tuple[Any, ...]] = {}
    for key in AXES:
        if key in axes_data and key != "overrides":
            axes[key] = tuple(_axis_value(key, v, source, i, serving)
                              for i, v in enumerate(_values(axes_data[key], source, f"axes.{key}")))
    overrides = _override_axes(axes_data.get("overrides"), source)

    models = {label: _load_model(label, base_dir, source, i) for i, label in enumerate(axes["model"])}
    clusters = {label: _load_cluster(label, base_dir, source, i) for i, label in enumerate(axes["cluster"])}
    _check_fixed_training(training, models, axes, source)
    scratch = next(iter(clusters.values())).model_dump()
    for key in overrides:  # names only; values are checked per scenario, where a bad one becomes a row
        try:
            _set_dotted(copy.deepcopy(scratch), key, None, ClusterSpec, source)
        except InputError as exc:
            raise InputError(source, f"axes.overrides.{key}", exc.problem, exc.fix) from None
    workloads = {}
    if serving:
        from .serving import load_workload_entry, serving_settings

        workloads = {label: load_workload_entry(label, base_dir, source, f"axes.workload[{i}]")
                     for i, label in enumerate(axes["workload"])}
    return SweepSpec(name=name, source=source, top_k=top_k, explain=explain, options=options, training=training,
                     axes=axes, overrides=overrides, models=models, clusters=clusters,
                     serving={**serving_settings(data.get("serving"), source), "objective": objective} if serving else None,
                     workloads=workloads)


def _check_serving_sections(data: dict[str, Any], axes_data: dict[str, Any], serving: bool, source: str) -> None:
    """A serving sweep (a ``workload`` axis) has no training settings; a training sweep no ``serving:``."""
    if not serving:
        if "serving" in data:
            raise InputError(source, "serving", "applies to serving sweeps, which have a workload axis",
                             "add axes.workload: [chat-1k-1k] or drop the serving section")
        return
    for key in ("training", "search"):
        if key in data:
            raise InputError(source, key, "is a training setting, but the workload axis makes this a serving sweep",
                             "drop it, or sweep training and serving in two files")
    for key in TRAINING_AXES:
        if key in axes_data:
            raise InputError(source, f"axes.{key}", "is a training axis, but the workload axis makes this a serving "
                             "sweep", "drop it, or sweep training and serving in two files")


def _values(raw: Any, source: str, field_name: str) -> list[Any]:
    values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not values or raw is None:
        raise InputError(source, field_name, "is empty: the sweep would have no scenarios",
                         "give at least one value or remove the axis")
    if len({repr(v) for v in values}) != len(values):
        raise InputError(source, field_name, f"repeats a value ({values})", "list each value once")
    return values


def _number(value: Any, source: str, field_name: str, integer: bool) -> int | float:
    if isinstance(value, str):  # YAML 1.1 reads 1.0e12 (no exponent sign) as a string
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            raise InputError(source, field_name, f"must be a number, got {value!r}", "write e.g. 1.0e+12") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InputError(source, field_name, f"must be a positive number, got {value!r}", "fix the value")
    if integer:
        if value != int(value):
            raise InputError(source, field_name, f"must be a whole number, got {value!r}", "fix the value")
        return int(value)
    return float(value)


def _axis_value(key: str, value: Any, source: str, index: int, serving: bool = False) -> Any:
    where = f"axes.{key}[{index}]"
    if key in LABEL_AXES or key == "workload":
        if not isinstance(value, str) or not value:
            raise InputError(source, where, f"must be a preset name or a file path, got {value!r}",
                             "e.g. llama3-8b, h100x64 or a .yaml path")
        return value
    if key in _INT_AXES:
        return _number(value, source, where, integer=True)
    if key == "train_tokens":
        return _number(value, source, where, integer=False)
    if key == "objective":
        _check_objective(value, source, where, serving)
    if key == "precision" and value not in ("bf16", "fp16", "fp8"):
        raise InputError(source, where, f"unknown precision {value!r}", "use bf16, fp16 or fp8")
    return value


def _check_objective(value: Any, source: str, where: str, serving: bool = False) -> None:
    if serving:
        from optimizer.serving.ranking import OBJECTIVES as SERVING_OBJECTIVES
    known = SERVING_OBJECTIVES if serving else OBJECTIVES
    if value not in known:
        raise InputError(source, where, f"unknown {'serving ' if serving else ''}objective {value!r}"
                         f"{did_you_mean(str(value), known)}", f"use one of: {', '.join(known)}")


def _search_options(raw: Any, source: str, top_k: int, objective: str) -> SearchOptions:
    if not isinstance(raw, dict):
        raise InputError(source, "search", "must be a mapping of search options", "e.g. search: {zero_stages: [1, 2]}")
    changes = {}
    for key, value in raw.items():
        if key not in SEARCH_KEYS:
            raise InputError(source, f"search.{key}", f"unknown search option{did_you_mean(str(key), SEARCH_KEYS)}",
                             f"known options: {', '.join(SEARCH_KEYS)}")
        changes[key] = _search_value(key, value, source)
    try:
        return SearchOptions(top_k=top_k, objective=objective, **changes)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        named = next((k for k in sorted(changes, key=len, reverse=True) if message.startswith(k)), None)
        raise InputError(source, f"search.{named}" if named else "search", message,
                         "fix the search option" + (f" (default {_option_default(named)})" if named else "")) from None


_SEARCH_TYPES = typing.get_type_hints(SearchOptions)
_ELEMENT_WORDS = {int: "whole numbers", str: "names", bool: "true/false values", float: "numbers"}
_SCALAR_WORDS = {int: "a whole number", str: "a name", bool: "true or false", float: "a number"}


def _option_default(name: str) -> str:
    default = next(f.default for f in dataclasses.fields(SearchOptions) if f.name == name)
    return _yaml_text(default)


def _yaml_text(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _search_value(key: str, value: Any, source: str) -> Any:
    """Check one ``search:`` value against the type of its SearchOptions field, so that a scalar where a
    list belongs (``micro_batch_sizes: 4``) or a list of mixed types is one line naming the field and a
    fix, not ``'int' object is not iterable`` from deep inside the search."""
    where = f"search.{key}"
    kind = _SEARCH_TYPES[key]
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    example = f"e.g. {key}: {_option_default(key)} (the default)"
    if origin is tuple:
        element = args[0]
        words = _ELEMENT_WORDS.get(element, "values")
        if not isinstance(value, (list, tuple)):
            raise InputError(source, where, f"must be a list of {words}, got {_cut(value)}",
                             f"write a list, e.g. {key}: [{_yaml_text(value)}]")
        if not value:
            raise InputError(source, where, "is empty: nothing would be searched", example)
        for item in value:
            if not _is(item, element):
                raise InputError(source, where, f"must be a list of {words}, got {_cut(item)} in {_cut(list(value))}",
                                 example)
        return tuple(value)
    if origin is typing.Literal:
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in args:
            value = str(value)  # expert_tp: 1 (YAML reads a number)
        if value not in args:
            raise InputError(source, where, f"must be one of {', '.join(map(str, args))}, got {_cut(value)}", example)
        return value
    if not _is(value, kind):
        raise InputError(source, where, f"must be {_SCALAR_WORDS.get(kind, 'a single value')}, got {_cut(value)}",
                         example)
    if kind is float and not math.isfinite(value):
        raise InputError(source, where, f"must be a finite number, got {value!r}", example)
    return value


def _is(value: Any, kind: Any) -> bool:
    """Strict YAML types: true/false is not a number, and a number is not true/false."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def _cut(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _training_section(raw: Any, source: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InputError(source, "training", "must be a mapping of training settings",
                         "e.g. training: {tp_comm_overlap: true}")
    return training_overrides(raw, source)


def _check_fixed_training(training: dict[str, Any], models: dict[str, ModelInput], axes: dict[str, tuple[Any, ...]],
                          source: str) -> None:
    """A fixed ``training:`` value that no scenario can accept (``precision: fp7``, a dispatcher option
    without its dispatcher, a CUDA-graph scope a model cannot capture) is a file-level error before any
    search, not one error row per scenario. Checked with each model's own training settings; the
    settings an axis sets are left out (an axis value may be what makes a combination fail, and that
    is the combination's error row)."""
    if not training:
        return
    varying = set(axes) & set(TRAINING_AXES)
    if varying & {"seq_length", "global_batch_tokens", "global_batch_size"}:
        varying |= {"global_batch_tokens", "global_batch_size"}  # divisibility depends on the axis values
    for label, model_input in models.items():
        merged = layered_training(model_input.training_overrides, training)
        for key in varying:
            merged.pop(key, None)
        try:
            build_training(merged, source=source, model=model_input.spec)
        except InputError as exc:
            where = exc.field if exc.field.startswith("training") else "training"
            raise InputError(source, where, exc.problem + (f" (with model {label})" if len(models) > 1 else ""),
                             exc.fix) from None


def _override_axes(raw: Any, source: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise InputError(source, "axes.overrides", "must be a mapping of dotted cluster fields to value lists",
                         "e.g. overrides: {topology.nic_gbps: [200, 400]}")
    return {str(k): tuple(_values(v, source, f"axes.overrides.{k}")) for k, v in raw.items()}


def _resolve_path(label: str, base_dir: Path) -> Path | None:
    """A label that names a file (relative to the sweep file first, then to the working directory)."""
    if not label.lower().endswith((".yaml", ".yml", ".json")) and "/" not in label:
        return None
    candidate = base_dir / label
    # names_existing_file never raises (a 300-character label is reported by the loader, not by the OS)
    return candidate if names_existing_file(candidate) else Path(label)


def _load(axis: str, loader, label: str, base_dir: Path, source: str, index: int):
    """A preset name or a file (relative to the sweep file); errors name the axis entry."""
    path = _resolve_path(label, base_dir)
    try:
        return loader(path if path is not None else label)
    except InputError as exc:
        raise InputError(source, f"axes.{axis}[{index}]", f"{exc}", f"fix the {axis} name or file") from None


def _load_model(label: str, base_dir: Path, source: str, index: int) -> ModelInput:
    return _load("model", load_model, label, base_dir, source, index)


def _load_cluster(label: str, base_dir: Path, source: str, index: int) -> ClusterSpec:
    return _load("cluster", load_cluster, label, base_dir, source, index)


def expand(sweep: SweepSpec) -> list[ScenarioTask]:
    """Every combination of the axes, in the fixed order of the module docstring.

    Combinations share what they have in common: one cluster object per cluster and override values,
    one training setup per model and training values, one options object per objective, and each of
    these is converted for hashing once (see :func:`scenarios.identity.canonical`). The tasks are the
    same as built one by one, at a fraction of the time and memory (10^5 scenarios are a few seconds)."""
    axis_names = list(sweep.axes)
    override_keys = list(sweep.overrides)
    order = ["model", "cluster"] + [f"override:{k}" for k in override_keys] + [a for a in axis_names if a not in LABEL_AXES]
    value_lists = {**{a: sweep.axes[a] for a in axis_names}, **{f"override:{k}": sweep.overrides[k] for k in override_keys}}
    shared = _Shared(sweep)
    tasks = []
    for index, combo in enumerate(itertools.product(*(value_lists[name] for name in order))):
        chosen = dict(zip(order, combo))
        overrides = {k: chosen[f"override:{k}"] for k in override_keys}
        settings = {a: chosen[a] for a in axis_names if a not in LABEL_AXES}
        tasks.append(_task(sweep, index, chosen["model"], chosen["cluster"], overrides, settings, shared))
    return tasks


class _Shared:
    """What the scenarios of one expansion share, built once: each entry is the object, or the message
    of the InputError/ValueError that building it raised (a combination's error row)."""

    def __init__(self, sweep: SweepSpec):
        self.sweep = sweep
        self.memo: dict[int, tuple[Any, Any]] = {}
        self._clusters: dict[tuple[str, str], Any] = {}
        self._trainings: dict[tuple[str, str], Any] = {}
        self._options: dict[tuple[str, int | None], SearchOptions] = {}

    def cluster(self, label: str, overrides: dict[str, Any]) -> ClusterSpec:
        key = (label, repr(list(overrides.items())))
        if key not in self._clusters:
            self._clusters[key] = _built(lambda: self.sweep.clusters[label].with_overrides(
                overrides, source=f"{self.sweep.source}: axes.overrides") if overrides else self.sweep.clusters[label])
        return _unwrap(self._clusters[key])

    def training(self, model_label: str, training_values: dict[str, Any]):
        key = (model_label, repr(list(training_values.items())))
        if key not in self._trainings:
            self._trainings[key] = _built(lambda: self._build_training(model_label, training_values))
        return _unwrap(self._trainings[key])

    def _build_training(self, model_label: str, training_values: dict[str, Any]):
        model_input = self.sweep.models[model_label]
        merged = layered_training(model_input.training_overrides, self.sweep.training, training_values)
        return build_training(merged, source=f"{self.sweep.source}: {model_label}", model=model_input.spec)

    def options(self, objective: str, top_k: int | None = None) -> SearchOptions:
        key = (objective, top_k)
        if key not in self._options:
            changes = {"objective": objective} if top_k is None else {"top_k": top_k}
            self._options[key] = self.sweep.options.with_changes(**changes)
        return self._options[key]


class _BuildError:
    def __init__(self, message: str):
        self.message = message


def _built(build) -> Any:
    try:
        return build()
    except (InputError, ValueError) as exc:
        return _BuildError(str(exc))


def _unwrap(value: Any) -> Any:
    if isinstance(value, _BuildError):
        raise ValueError(value.message)
    return value


def _task(sweep: SweepSpec, index: int, model_label: str, cluster_label: str, overrides: dict[str, Any],
          settings: dict[str, Any], shared: _Shared | None = None) -> ScenarioTask:
    shared = shared or _Shared(sweep)
    if sweep.serving is not None:
        return _serving_task(sweep, index, model_label, cluster_label, overrides, settings, shared)
    objective = settings.get("objective", sweep.options.objective)
    training_values = {k: v for k, v in settings.items() if k in TRAINING_AXES}
    identity = {"model": model_label, "cluster": cluster_label, "overrides": overrides, "training": sweep.training,
                "settings": training_values, "objective": objective, "search": shared.options(sweep.options.objective, 1)}
    params: dict[str, Any] = {"sweep": sweep.name, "scenario_index": index,
                              "scenario_id": stable_hash(identity, shared.memo),
                              "inputs_hash": None, "tool_version": tool_version(), "model": model_label,
                              "cluster": cluster_label, **overrides}
    model_input = sweep.models[model_label]
    scenario, error = None, None
    try:
        cluster = shared.cluster(cluster_label, overrides)
        training = shared.training(model_label, training_values)
        scenario = Scenario(model=model_input.spec, training=training, cluster=cluster,
                            options=shared.options(objective))
    except (InputError, ValueError) as exc:
        error = str(exc)
    params.update(resolved_columns(scenario, model_input, settings, objective))
    params["inputs_hash"] = stable_hash({"scenario": scenario, "error": error, "explain": sweep.explain,
                                         "version": tool_version()} if scenario is not None else
                                        {"identity": identity, "error": error, "version": tool_version()}, shared.memo)
    return ScenarioTask(index=index, params=params, scenario=scenario, error=error, explain=sweep.explain)


def _serving_task(sweep: SweepSpec, index: int, model_label: str, cluster_label: str, overrides: dict[str, Any],
                  settings: dict[str, Any], shared: _Shared) -> ScenarioTask:
    """A serving sweep's scenario (:mod:`scenarios.serving`): identities as a training scenario's."""
    from .serving import serving_scenario

    objective = settings.get("objective", sweep.serving["objective"])
    workload_label = settings["workload"]
    identity = {"model": model_label, "cluster": cluster_label, "overrides": overrides, "workload": workload_label,
                "serving": sweep.serving, "objective": objective}
    params: dict[str, Any] = {"sweep": sweep.name, "scenario_index": index,
                              "scenario_id": stable_hash(identity, shared.memo), "inputs_hash": None,
                              "tool_version": tool_version(), "model": model_label, "cluster": cluster_label,
                              **overrides, "workload": workload_label}
    model_input = sweep.models[model_label]
    scenario, error = None, None
    try:
        cluster = shared.cluster(cluster_label, overrides)
        scenario = serving_scenario(model_input.spec, cluster, sweep.workloads[workload_label], sweep.serving,
                                    objective, sweep.top_k, model_source=model_label)
    except (InputError, ValueError) as exc:
        error = str(exc)
    params.update(resolved_columns(None, model_input, {}, objective))
    if scenario is not None:
        cl = scenario.cluster
        params.update(gpu=cl.gpu.name, num_nodes=cl.topology.num_nodes, num_gpus=cl.num_gpus,
                      gpu_memory_gib=cl.gpu.memory_gib, nic_gbps=cl.topology.nic_GBps * 8,
                      price_per_gpu_hour_usd=cl.economics.price_per_gpu_hour_usd)
    params["inputs_hash"] = stable_hash({"scenario": scenario, "error": error, "version": tool_version()}
                                        if scenario is not None else
                                        {"identity": identity, "error": error, "version": tool_version()}, shared.memo)
    return ScenarioTask(index=index, params=params, scenario=scenario, error=error, explain=sweep.explain)


def resolved_columns(scenario: Scenario | None, model_input: ModelInput, settings: dict[str, Any],
                     objective: str) -> dict[str, Any]:
    """The figures the search actually used (the axis values where the scenario could not be built)."""
    if scenario is None:
        return {"model_name": model_input.spec.name, "gpu": None, "num_nodes": None, "num_gpus": None,
                "gpu_memory_gib": None, "nic_gbps": None, "price_per_gpu_hour_usd": None,
                "seq_length": settings.get("seq_length"), "global_batch_size": settings.get("global_batch_size"),
                "global_batch_tokens": settings.get("global_batch_tokens"),
                "train_tokens": settings.get("train_tokens"), "precision": settings.get("precision"),
                "objective": objective}
    cl, tr = scenario.cluster, scenario.training
    return {"model_name": scenario.model.name, "gpu": cl.gpu.name, "num_nodes": cl.topology.num_nodes,
            "num_gpus": cl.num_gpus, "gpu_memory_gib": cl.gpu.memory_gib, "nic_gbps": cl.topology.nic_GBps * 8,
            "price_per_gpu_hour_usd": cl.economics.price_per_gpu_hour_usd, "seq_length": tr.seq_length,
            "global_batch_size": tr.global_batch_size, "global_batch_tokens": tr.global_batch_tokens,
            "train_tokens": tr.train_tokens, "precision": tr.precision, "objective": objective}
