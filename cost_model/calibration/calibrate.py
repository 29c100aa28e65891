"""``plan-search calibrate``: fit the global parameters on every measured run, cross-validate them by
leaving out one source at a time, derive the uncertainty bands, and (``--write``) store the result.

What is fitted and how: :mod:`cost_model.calibration.fit`. Where the values go with ``--write``:

* each GPU preset's ``gemm_efficiency``, ``gemm_efficiency_fp8``, ``gemm_efficiency_fp4`` (Blackwell) and
  ``attention_efficiency``
  (``hardware/presets/*.yaml``), for every preset of a fitted family
  (:func:`cost_model.calibration.fit.efficiencies`);
* each stack's ``kernel_efficiency`` (``cost_model/presets/stacks.yaml``);
* ``cost_model/calibration/fitted.yaml``: every parameter with its prior, the cost options among them
  (the host's kernel issue time, FlashAttention-2's share, which :class:`cost_model.options.CostOptions`
  reads as its defaults), the leave-one-source-out report and the bands
  (:mod:`cost_model.calibration.bands`).

The fit starts from the priors, never from the stored values, so writing and refitting is a fixed point.
"""

from __future__ import annotations

import math
import os
import re
import signal
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml


from cost_model.stacks import DEFAULT_STACK, STACK_NAMES

from .bands import bands_section, gpu_family, model_class
from .stored import FITTED_FILE, stored_parameters
from .fit import PARAMETERS, efficiencies, stack_efficiency, Fit, Fold, fit, kendall_tau, leave_one_source_out
from .validate import PreparedRow, ValidationRow, precision_group, prepare_row

def measured_rows(rows: list[dict[str, Any]], source: str) -> list[PreparedRow]:
    """The rows that publish a throughput, read once."""
    prepared = [prepare_row(row, source) for row in rows]
    return [row for row in prepared if row.has_throughput]


def dataset_rows(include_csv: bool = True) -> tuple[list[PreparedRow], list[Any]]:
    """Every measured row of both datasets (published_runs.yaml and training_runs.csv), and the CSV rows
    that could not be priced honestly, with why."""
    from .training_runs import load_all_rows

    rows, skipped = load_all_rows(include_csv=include_csv)
    return measured_rows(rows, "datasets"), skipped


@dataclass
class SourceReport:
    source_group: str
    rows: int
    fitted_median_abs: float
    """Median |error| with every source in the fit."""
    held_out_median_abs: float
    """Median |error| with this source left out of the fit."""
    held_out_median_signed: float
    held_out_worst_abs: float


@dataclass
class RankingGroup:
    """Layouts of one model on one kind of cluster (:func:`_layout_group`: same source and Megatron-Bridge
    container, model, GPU as priced, sequence length and precision; the GPU count varies)."""

    key: str
    rows: int
    kendall_tau: float
    best_in_top3: bool
    discordant_pairs: int
    """Pairs of layouts the prediction orders the other way round from the measurement."""
    widest_discordant_gap: float
    """Of those pairs, the largest measured difference (faster over slower, minus 1); 0 when none. A miss on
    pairs that measured a percent or two apart is a miss on differences the size of run-to-run noise."""

    def record(self) -> dict[str, Any]:
        """The group as ``fitted.yaml`` stores it."""
        return {"group": self.key, "rows": self.rows, "kendall_tau": round(self.kendall_tau, 3),
                "measured_best_in_predicted_top3": self.best_in_top3, "discordant_pairs": self.discordant_pairs,
                "widest_discordant_gap": round(self.widest_discordant_gap, 6)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RankingGroup":
        return cls(record["group"], record["rows"], record["kendall_tau"], record["measured_best_in_predicted_top3"],
                   record["discordant_pairs"], record["widest_discordant_gap"])


@dataclass
class Calibration:
    fit: Fit
    folds: list[Fold]
    sources: list[SourceReport]
    held_out: list[tuple[PreparedRow, ValidationRow]]
    """Every row, priced without its own source."""
    rankings: list[RankingGroup]
    bands: list[dict[str, Any]]

    @property
    def held_out_errors(self) -> np.ndarray:
        return np.array([result.tflops_error for _, result in self.held_out])

    def overall(self) -> dict[str, float]:
        errors = self.held_out_errors
        in_sample = np.expm1(self.fit.residuals)
        taus = [g.kendall_tau for g in self.rankings if not math.isnan(g.kendall_tau)]
        return {
            "rows": int(len(errors)),
            "fitted_median_abs_error": float(np.median(np.abs(in_sample))),
            "held_out_median_abs_error": float(np.median(np.abs(errors))),
            "held_out_median_signed_error": float(np.median(errors)),
            "held_out_rows_beyond_25pct": int((np.abs(errors) > 0.25).sum()),
            "worst_source_median_abs_error": max(s.held_out_median_abs for s in self.sources),
            "ranking_groups": len(self.rankings),
            "median_kendall_tau": float(np.median(taus)) if taus else float("nan"),
            "groups_with_best_in_top3": sum(g.best_in_top3 for g in self.rankings),
        }


def calibrate(rows: list[PreparedRow], progress: Callable[[str], None] | None = None,
              fold_iterations: int = 4) -> Calibration:
    """Fit on all ``rows``, cross-validate by source, and derive rankings and bands."""
    full = fit(rows, progress=progress)
    folds = leave_one_source_out(full, max_iterations=fold_iterations, progress=progress)
    by_group = {fold.source_group: fold for fold in folds}
    held: dict[int, ValidationRow] = {}
    for fold in folds:
        members = [i for i, row in enumerate(rows) if row.source_group == fold.source_group]
        for i, result in zip(members, fold.held_out):
            held[i] = result
    held_out = [(rows[i], held[i]) for i in range(len(rows))]
    in_sample = np.expm1(full.residuals)
    sources = []
    for group in sorted(by_group):
        members = [i for i, row in enumerate(rows) if row.source_group == group]
        errors = np.array([held[i].tflops_error for i in members])
        sources.append(SourceReport(
            source_group=group, rows=len(members),
            fitted_median_abs=float(np.median(np.abs(in_sample[members]))),
            held_out_median_abs=float(np.median(np.abs(errors))),
            held_out_median_signed=float(np.median(errors)),
            held_out_worst_abs=float(np.max(np.abs(errors)))))
    return Calibration(fit=full, folds=folds, sources=sources, held_out=held_out,
                       rankings=ranking_groups(held_out), bands=bands(held_out))


CONTAINER = re.compile(r"(\d{2}\.\d{2}(?:\.\d{2})?) NeMo Container")


def _layout_group(row: PreparedRow) -> str:
    """Layouts of one model on one kind of cluster under one software release: same source, container
    (a Megatron-Bridge table per NeMo container), model, GPU as priced (:func:`_gpu_as_priced`), sequence
    length and precision recipe;
    GPU counts and layouts vary. Rows of different containers differ by software, not by layout, so
    they are not ranked against each other."""
    cluster = row.row.get("cluster") or {}
    container = CONTAINER.search(str(row.row.get("source", "")))
    training = row.training
    precision = training.precision + (f"-{training.fp8_recipe}" if training.precision == "fp8" else "")
    return (f"{row.source_group}{' ' + container.group(1) if container else ''} {row.model.name} on "
            f"{_gpu_as_priced(cluster)} s={training.seq_length} {precision}")


def _gpu_as_priced(cluster: dict[str, Any]) -> str:
    """The row's GPU: its preset with the GPU fields the row's cluster overrides. llm-foundry's A100 40GB
    runs are the ``a100-sxm-80gb`` preset with 39.5 GiB and 1,555 GB/s (``training_runs.GPU_TYPES``): a
    different part from the 80GB runs, which its tables measure in a section of their own."""
    changed = sorted((key.split(".", 1)[1], value) for key, value in (cluster.get("overrides") or {}).items()
                     if key.startswith("gpu."))
    return str(cluster.get("gpu")) + (f" ({', '.join(f'{k} {v:g}' for k, v in changed)})" if changed else "")


def ranking_groups(held_out: list[tuple[PreparedRow, ValidationRow]], min_rows: int = 4) -> list[RankingGroup]:
    """Kendall's tau between predicted and measured throughput per GPU within each group of at least
    ``min_rows`` layouts (:func:`_layout_group`), and whether the measured best is predicted top 3."""
    groups: dict[str, dict[str, ValidationRow]] = {}
    for row, result in held_out:
        # One row per layout and GPU count: the same one measured twice says nothing about ranking.
        groups.setdefault(_layout_group(row), {}).setdefault(result.layout, result)
    out = []
    for key, layouts in sorted(groups.items()):
        results = list(layouts.values())
        if len(results) < min_rows:
            continue
        measured = np.array([r.predicted_tokens_per_gpu / (1 + r.tflops_error) for r in results])
        predicted = np.array([r.predicted_tokens_per_gpu for r in results])
        if np.ptp(measured) == 0:
            continue
        best = int(np.argmax(measured))
        top3 = set(np.argsort(-predicted, kind="stable")[:3].tolist())
        order = np.sign(predicted[:, None] - predicted[None, :]) * np.sign(measured[:, None] - measured[None, :])
        i, j = np.nonzero(np.triu(order < 0))
        gaps = np.maximum(measured[i], measured[j]) / np.minimum(measured[i], measured[j]) - 1
        out.append(RankingGroup(key=key, rows=len(results), kendall_tau=kendall_tau(predicted, measured),
                                best_in_top3=best in top3, discordant_pairs=int(len(i)),
                                widest_discordant_gap=float(gaps.max()) if len(i) else 0.0))
    return out


def bands(held_out: list[tuple[PreparedRow, ValidationRow]]) -> list[dict[str, Any]]:
    """The bands section (:func:`cost_model.calibration.bands.bands_section`) of the held-out residuals,
    grouped by each row's stack, GPU family and model class."""
    return bands_section([row.training.stack for row, _ in held_out],
                         [gpu_family(row.cluster.gpu) for row, _ in held_out],
                         [model_class(row.model) for row, _ in held_out],
                         [result.tflops_error for _, result in held_out])


# --- writing -------------------------------------------------------------------------------------------

def preset_values(values: dict[str, float]) -> dict[str, dict[str, float]]:
    """GPU preset -> the efficiencies the fitted parameters give it (presets of a fitted family only)."""
    from hardware.loader import load_cluster
    from hardware.preset_catalog import gpu_preset_names

    out: dict[str, dict[str, float]] = {}
    for preset in gpu_preset_names():
        gpu = load_cluster(preset).gpu
        family = gpu_family(gpu)
        fitted = efficiencies(values, family)
        fields = {}
        if fitted:
            fields["gemm_efficiency"] = round(fitted["gemm_efficiency"], 3)
        if gpu.peak_tflops_fp8 and fitted.get("gemm_efficiency_fp8"):
            fields["gemm_efficiency_fp8"] = round(fitted["gemm_efficiency_fp8"], 3)
        if gpu.peak_tflops_fp4 and fitted.get("gemm_efficiency_fp4"):
            fields["gemm_efficiency_fp4"] = round(fitted["gemm_efficiency_fp4"], 3)
        if fitted:
            fields["attention_efficiency"] = round(fitted["attention_efficiency"], 3)
        if fields:
            out[preset] = fields
    return out


def write(calibration: Calibration, presets_dir: Path | None = None, stacks_file: Path | None = None,
          fitted_file: Path | None = None) -> list[Path]:
    """Store the fitted values where the cost model reads them; return the files written.

    Every file's new text is built first and then stored by :func:`_store`, so that an error or a
    Ctrl-C while building leaves every file as it was."""
    values = calibration.fit.values
    presets_dir = presets_dir or Path(str(resources.files("hardware").joinpath("presets")))
    files: dict[Path, str] = {}
    for preset, fields in preset_values(values).items():
        path = presets_dir / f"{preset}.yaml"
        text = path.read_text(encoding="utf-8")
        family = gpu_family_of_preset(preset)
        for key, value in fields.items():
            formula = (f"gemm.bf16 x family.{family}.bf16 x attention.vs_gemm x attention.{family}"
                       if key == "attention_efficiency" else
                       f"gemm.bf16 x family.{family}.bf16" + (f" x gemm.fp8_vs_bf16 x family.{family}.fp8"
                                                              if key.endswith("fp8") else
                                                              " x gemm.fp4_vs_bf16" if key.endswith("fp4") else ""))
            line = (f"  {key}: {value:<8}# fitted by `plan-search calibrate`: {formula} "
                    "(cost_model/calibration/fitted.yaml)")
            if re.search(rf"^  {key}:.*$", text, flags=re.M):
                text = re.sub(rf"^  {key}:.*$", line, text, count=1, flags=re.M)
            else:
                text = re.sub(r"^(  gemm_efficiency:.*)$", lambda m: m.group(1) + "\n" + line, text, count=1, flags=re.M)
        files[path] = text
    stacks_path = stacks_file or Path(str(resources.files("cost_model").joinpath("presets", "stacks.yaml")))
    text = stacks_path.read_text(encoding="utf-8")
    for stack in STACK_NAMES:
        if stack == DEFAULT_STACK:
            continue
        touched = calibration.fit.touched.get(f"stack.{stack}", 0)
        comment = (f"# fitted by `plan-search calibrate` on {touched} runs: stack.shared x stack.{stack}" if touched
                   else "# no measured run of this stack: stack.shared")
        value = round(stack_efficiency(values, stack), 3)
        text = _replace_in_stack(text, stack, f"    kernel_efficiency: {value:<8}{comment}")
    files[stacks_path] = text
    files[fitted_file or FITTED_FILE] = fitted_document(calibration)
    _store(files)
    stored_parameters.cache_clear()
    return list(files)


def _store(files: dict[Path, str]) -> None:
    """Write ``files`` (path -> text), each to a temporary name beside it and renamed over it (atomic on
    POSIX). A Ctrl-C that arrives meanwhile is held until every file is written, then raised: the
    presets, stacks.yaml and fitted.yaml are never left half from one calibration and half from
    another."""
    interrupted: list[int] = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum)) if in_main else None
    try:
        for path, text in files.items():
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, path)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    if interrupted:
        raise KeyboardInterrupt


def fitted_efficiencies(family: str, fitted_file: Path | None = None) -> dict[str, float]:
    """The GEMM efficiencies the stored calibration (fitted.yaml) gives a GPU family; empty when the
    family is not fitted or nothing is stored."""
    values = stored_parameters(fitted_file or FITTED_FILE)
    if {p.name for p in PARAMETERS} - set(values):
        return {}
    return {k: v for k, v in efficiencies(values, family).items() if v is not None}


def gpu_family_of_preset(preset: str) -> str:
    from hardware.loader import load_cluster

    return gpu_family(load_cluster(preset).gpu)


def _replace_in_stack(text: str, stack: str, line: str) -> str:
    pattern = re.compile(rf"(^  {re.escape(stack)}:\n(?:    .*\n)*?)    kernel_efficiency:.*$", flags=re.M)
    new, count = pattern.subn(lambda m: m.group(1) + line, text, count=1)
    if not count:
        raise ValueError(f"stacks.yaml has no kernel_efficiency for {stack}")
    return new


def parameter_records(parameters, fit: Fit) -> dict[str, dict[str, Any]]:
    """Each fitted parameter as a stored record: value, prior, prior spread, rows that pin it, meaning, source."""
    return {p.name: {"value": round(fit.values[p.name], 4), "prior": p.prior, "prior_log_sd": p.prior_log_sd,
                     "rows": fit.touched.get(p.name, 0), "meaning": p.meaning, "source": p.source}
            for p in parameters}


def source_records(sources: list[SourceReport]) -> list[dict[str, Any]]:
    """Each source's errors, fitted and held out, as stored records."""
    return [{"source_group": s.source_group, "rows": s.rows,
             "fitted_median_abs_error": round(s.fitted_median_abs, 4),
             "held_out_median_abs_error": round(s.held_out_median_abs, 4),
             "held_out_median_signed_error": round(s.held_out_median_signed, 4),
             "held_out_worst_abs_error": round(s.held_out_worst_abs, 4)} for s in sources]


def parameter_lines(parameters, fit: Fit) -> list[str]:
    """The fitted parameters as a text table: prior, fitted value, rows that pin it, meaning."""
    lines = [f"{'parameter':28s} {'prior':>7s} {'fitted':>7s} {'rows':>5s}  meaning"]
    lines += [f"{p.name:28s} {p.prior:7.3g} {fit.values[p.name]:7.3g} {fit.touched.get(p.name, 0):5d}  {p.meaning}"
              for p in parameters]
    return lines


def precision_records(held_out: list[tuple[PreparedRow, ValidationRow]]) -> list[dict[str, Any]]:
    """Held-out errors of the rows of each GEMM precision and recipe (:func:`validate.precision_group`):
    each row priced by the fit made without its source, so a precision measured by one source only
    (NVFP4: Megatron-Bridge) is priced from the priors of its own parameters."""
    groups: dict[str, list[float]] = {}
    for _, result in held_out:
        groups.setdefault(precision_group(result.precision), []).append(result.tflops_error)
    return [{"precision": name, "rows": len(errors),
             "held_out_median_abs_error": round(float(np.median(np.abs(errors))), 4),
             "held_out_median_signed_error": round(float(np.median(errors)), 4)}
            for name, errors in sorted(groups.items())]


def precision_line(records: list[dict[str, Any]]) -> str:
    """:func:`precision_records` as one line."""
    return "held out by precision (median |error|): " + "; ".join(
        f"{r['precision']} {r['rows']} rows {r['held_out_median_abs_error']:.1%} "
        f"(signed {r['held_out_median_signed_error']:+.1%})" for r in records)


def source_lines(sources: list[SourceReport]) -> list[str]:
    """Each source's errors as a text table: fitted, held out, signed and worst held-out error."""
    lines = [f"{'source':20s} {'rows':>5s} {'fitted |err|':>12s} {'held out |err|':>14s} {'signed':>8s} {'worst':>7s}"]
    lines += [f"{s.source_group[:20]:20s} {s.rows:5d} {s.fitted_median_abs:12.1%} {s.held_out_median_abs:14.1%} "
              f"{s.held_out_median_signed:+8.1%} {s.held_out_worst_abs:7.0%}" for s in sources]
    return lines


def ranking_lines(groups: list[RankingGroup], below: float = 0.8) -> list[str]:
    """The ranking groups whose Kendall tau is under ``below`` (the issue-14 target), each with the pairs it
    orders wrongly and how far apart the widest of them measured."""
    return [f"  tau {g.kendall_tau:+.2f}: {g.discordant_pairs} of {g.rows * (g.rows - 1) // 2} pairs out of order, "
            f"the widest measured {g.widest_discordant_gap:.1%} apart"
            f"{'' if g.best_in_top3 else '; measured best not in the predicted top 3'}: {g.key}"
            for g in groups if g.kendall_tau < below]


def fitted_document(calibration: Calibration) -> str:
    overall = calibration.overall()
    document = {
        "parameters": parameter_records(PARAMETERS, calibration.fit),
        "cross_validation": {
            "method": "leave-one-source-out: fit without a source_group, price its rows",
            "overall": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in overall.items()},
            "sources": source_records(calibration.sources),
            "precisions": precision_records(calibration.held_out),
            "rankings": [g.record() for g in calibration.rankings],
        },
        "bands": calibration.bands,
    }
    header = ("# Written by `plan-search calibrate --write` (cost_model/calibration/calibrate.py); do not edit by hand.\n"
              "# parameters: the fitted global parameters (cost_model/calibration/fit.py) with their priors.\n"
              "# cross_validation: errors on each source with that source left out of the fit.\n"
              "# bands: 10th/90th percentiles of those held-out residuals, predicted/measured - 1, per comparable group.\n")
    return header + yaml.safe_dump(document, sort_keys=False, width=120)
