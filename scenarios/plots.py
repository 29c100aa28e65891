"""Figures of a what-if study (matplotlib, Agg backend, written as PNG and SVG), made to be put on a
slide as they are: plain-language axis names with units, a legend, the option's current value marked,
and every option's GPU count and price beside its point.

Two rules keep the figures honest:

* time and cost get their own panels, each with its own axis, so neither curve hides the other (for a
  fixed GPU count cost is proportional to time, and on shared axes the two lines coincide);
* the value axes start at zero and each point is labelled with its change relative to the current
  value, so a 3% change looks like 3% and not like the cliff an autoscaled axis draws.

Files are byte-for-byte reproducible: the SVG gets a fixed hash salt and no date, the PNG no software
tag, so a rerun on the same inputs does not show up as a change in version control.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

FORMATS = ("png", "svg")
TIME_COLOR, COST_COLOR, CURRENT_COLOR, NOFIT_COLOR = "tab:blue", "tab:orange", "0.35", "tab:red"


@dataclass(frozen=True)
class SensitivityAxis:
    """How one sensitivity study is drawn: its x-axis name (plain language, with unit), the option's own
    value of the parameter (marked as "current"), and a factor from the file's values to the axis's
    (e.g. nodes to GPUs, so that a cluster-size axis reads in GPUs)."""

    study: str
    """The ``study`` label of the sensitivity rows this axis draws."""
    title: str
    """Panel title, e.g. 'NIC bandwidth on H100 x 4096'."""
    label: str
    """Axis label with unit, e.g. 'NIC bandwidth (Gb/s per NIC, 8 NICs per 8-GPU node)'."""
    current: float | None
    """The option's own value of the parameter, in the file's unit (None when unknown)."""
    scale: float = 1.0


def _save(figure, stem: Path) -> list[Path]:
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "plan-search"}):
        for fmt in FORMATS:
            path = stem.with_suffix(f".{fmt}")
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            figure.savefig(path, format=fmt, dpi=120, bbox_inches="tight", metadata=metadata)
            paths.append(path)
    plt.close(figure)
    return paths


def pareto_plot(options: pd.DataFrame, stem: Path, title: str, subtitle: str = "") -> list[Path]:
    """Effective cost (US$ millions) against effective time-to-train (days: failures, checkpoints and
    restarts counted), one point per cluster option's best plan, each
    labelled with its GPU count and price per GPU-hour; the options on the cost-vs-time Pareto frontier
    are joined by a line. Options without a plan are listed under the plot with their status, so an
    option that fits nowhere is never silently missing. Uses the columns ``option``, ``status``,
    ``num_gpus``, ``price_per_gpu_hour_usd``, ``effective_time_to_train_days``, ``effective_cost_usd`` and
    ``pareto``."""
    ok = options[options["status"] == "ok"]
    figure, axis = plt.subplots(figsize=(8.5, 5.4))
    front = ok[ok["pareto"].astype(bool)].sort_values("effective_time_to_train_days")
    dominated = ok[~ok["pareto"].astype(bool)]
    axis.scatter(dominated["effective_time_to_train_days"], dominated["effective_cost_usd"] / 1e6, s=55, color="0.55",
                 label="dominated: another option is faster and cheaper", zorder=3)
    axis.scatter(front["effective_time_to_train_days"], front["effective_cost_usd"] / 1e6, s=75, color=TIME_COLOR,
                 label="Pareto frontier: no option is both faster and cheaper", zorder=4)
    axis.plot(front["effective_time_to_train_days"], front["effective_cost_usd"] / 1e6, color=TIME_COLOR, linewidth=1.5, zorder=2)
    points = [((row["effective_time_to_train_days"], row["effective_cost_usd"] / 1e6),
               f"{row['option']}\n{_gpus(row['num_gpus'])} at ${row['price_per_gpu_hour_usd']:.2f}/GPU-h")
              for _, row in ok.iterrows()]
    axis.set_xlabel("effective time to train (days; failures, checkpoints and restarts counted)")
    axis.set_ylabel("effective cost (US$ millions)")
    if len(ok):
        # zero-anchored, with room for the labels right of and above the points
        axis.set_xlim(0, float(ok["effective_time_to_train_days"].max()) * 1.3)
        axis.set_ylim(0, float(ok["effective_cost_usd"].max()) / 1e6 * 1.2)
    else:
        axis.text(0.5, 0.5, "no option has a plan that fits", transform=axis.transAxes, ha="center",
                  color=NOFIT_COLOR)
    axis.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.xaxis.set_major_formatter(FuncFormatter(_thousands))
    if len(ok):
        axis.legend(fontsize=8, loc="lower left")
    _place_labels(figure, axis, points)
    missing = options[options["status"] != "ok"]
    if len(missing):
        text = "; ".join(f"{row['option']} ({_gpus(row['num_gpus'])}): "
                         + _missing_reason(row["status"])
                         for _, row in missing.iterrows())
        figure.text(0.01, -0.02, "Not shown: " + text, fontsize=8, color=NOFIT_COLOR, ha="left", va="top",
                    wrap=True)
    return _save(figure, stem)


def _missing_reason(status: str) -> str:
    return {"no_fit": "no plan fits in memory", "over_power_cap": "over the site's power cap"}.get(status, "search failed")


def scaling_plot(options: pd.DataFrame, stem: Path, title: str, site_power_mw: float | None = None) -> list[Path]:
    """Where adding GPUs stops paying, per GPU type: two panels against cluster size (GPUs, log scale):
    ETTR (the share of wall-clock time that trains), and time to train, nominal (every step runs,
    dashed) and effective (failures, checkpoints and restarts counted, solid). Each effective step up in
    size is labelled with what it buys: the fraction of the ideal speed-up reached (1 = days fall in
    proportion to GPUs; 0 = no faster; below 0 = slower), and the size with the shortest effective time is
    starred: past it, more GPUs lose more to failures than they gain. Options over the site's power cap
    are drawn as red bands on the size axis. Uses ``gpu``, ``num_gpus``, ``status``, ``ettr``, ``time_to_train_days``
    and ``effective_time_to_train_days``."""
    figure, (ettr_axis, days_axis) = plt.subplots(1, 2, figsize=(12, 5.0))
    ok = options[options["status"] == "ok"].sort_values("num_gpus", kind="stable")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (gpu, rows) in enumerate(ok.groupby("gpu", sort=False)):
        color = colors[i % len(colors)]
        gpus = rows["num_gpus"].astype(float).to_numpy()
        effective = rows["effective_time_to_train_days"].astype(float).to_numpy()
        ettr_axis.plot(gpus, rows["ettr"].astype(float), marker="o", color=color, label=gpu)
        days_axis.plot(gpus, rows["time_to_train_days"].astype(float), marker="o", color=color, linestyle="--",
                       linewidth=1.0, alpha=0.6)
        days_axis.plot(gpus, effective, marker="o", color=color, label=gpu)
        for j in range(1, len(gpus)):
            share = scaling_efficiency(gpus[j - 1], effective[j - 1], gpus[j], effective[j])
            days_axis.annotate(f"{share:.0%} of ideal", (gpus[j], effective[j]), textcoords="offset points",
                               xytext=(0, 8), ha="center", fontsize=7, color=color)
        for x, y in zip(gpus, effective):
            days_axis.annotate(f"{y:,.1f} d", (x, y), textcoords="offset points", xytext=(10, 0), ha="left",
                               va="center", fontsize=7, color=color)
        # where adding GPUs stops paying: the size with the shortest effective time
        best = int(np.nanargmin(effective))
        days_axis.scatter([gpus[best]], [effective[best]], s=190, marker="*", color=color, zorder=4)
    capped = options[options["status"] == "over_power_cap"]
    for axis in (ettr_axis, days_axis):
        for _, row in capped.iterrows():
            axis.axvline(float(row["num_gpus"]), color=NOFIT_COLOR, linewidth=6, alpha=0.25, zorder=1)
            axis.annotate(f"{row['option']}: over the site's power cap", (float(row["num_gpus"]), 0),
                          xycoords=("data", "axes fraction"), textcoords="offset points", xytext=(4, 6),
                          fontsize=7, color=NOFIT_COLOR, rotation=90)
        axis.set_xscale("log")
        axis.set_xlabel("cluster size (GPUs, log scale)")
        axis.xaxis.set_major_formatter(FuncFormatter(_thousands))
        axis.xaxis.set_minor_formatter(FuncFormatter(lambda value, _p: ""))
        axis.grid(True, alpha=0.3, which="both")
    sizes = options["num_gpus"].dropna().astype(float)
    if len(sizes):
        ticks = sorted(set(sizes))
        for axis in (ettr_axis, days_axis):
            axis.set_xticks(ticks)
            axis.set_xlim(min(ticks) / 1.4, max(ticks) * 1.4)
    ettr_axis.set_ylim(0, 1.05)
    ettr_axis.set_ylabel("ETTR (share of wall-clock time that trains)")
    ettr_axis.set_title("effective-training-time ratio", fontsize=9)
    top = float(ok[["time_to_train_days", "effective_time_to_train_days"]].max().max()) if len(ok) else 1.0
    days_axis.set_ylim(0, top * 1.25 if top > 0 else 1.0)
    days_axis.set_ylabel("time to train (days)")
    days_axis.set_title("time to train: effective (solid; star = shortest) and nominal (dashed)", fontsize=9)
    if len(ok):
        ettr_axis.legend(fontsize=8, loc="lower left")
        days_axis.legend(fontsize=8, loc="upper right")
    else:
        days_axis.text(0.5, 0.5, "no option has a plan that fits", transform=days_axis.transAxes, ha="center",
                       color=NOFIT_COLOR)
    cap = f"; site power cap {site_power_mw:,.0f} MW" if site_power_mw is not None else ""
    figure.suptitle(title + cap, fontsize=10)
    figure.tight_layout()
    return _save(figure, stem)


def scaling_efficiency(gpus_before: float, days_before: float, gpus_after: float, days_after: float) -> float:
    """The share of the ideal speed-up a bigger cluster reaches: (days saved) / (days an ideal, linearly
    scaling cluster would save). 1 = days fall in proportion to GPUs; 0 = no faster; below 0 = slower."""
    ideal_saved = days_before * (1 - gpus_before / gpus_after)
    return (days_before - days_after) / ideal_saved if ideal_saved > 0 else math.nan


def sensitivity_plot(sensitivity: pd.DataFrame, axes_spec: list[SensitivityAxis], stem: Path, title: str) -> list[Path]:
    """One row per sensitivity study, two panels: time to train (days) and cost (US$ millions) against the
    parameter's value. Each point is labelled with its change from the option's current value (marked by
    a dotted line); hollow points are values where the best plan differs from the option's own; values
    where nothing fits are red bands. Uses the columns ``study``, ``value``, ``status``,
    ``time_to_train_days``, ``cost_usd`` and ``plan_changed``."""
    figure, panels = plt.subplots(len(axes_spec), 2, figsize=(11, 3.7 * len(axes_spec)), squeeze=False)
    for (time_axis, cost_axis), spec in zip(panels, axes_spec):
        rows = sensitivity[sensitivity["study"] == spec.study]
        ok = rows[rows["status"] == "ok"]
        x = ok["value"].astype(float) * spec.scale
        current = ok[ok["value"].astype(float) == spec.current] if spec.current is not None else ok.iloc[0:0]
        for axis, column, factor, color, name, unit in (
                (time_axis, "time_to_train_days", 1.0, TIME_COLOR, "time to train (days)", "d"),
                (cost_axis, "cost_usd", 1e-6, COST_COLOR, "cost (US$ millions)", "$M")):
            y = ok[column].astype(float) * factor
            axis.plot(x, y, color=color, linewidth=1.5, zorder=2)
            changed = ok["plan_changed"].fillna(False).astype(bool).to_numpy()
            axis.scatter(x[~changed], y[~changed], s=45, color=color, zorder=3)
            axis.scatter(x[changed], y[changed], s=45, facecolors="white", edgecolors=color, linewidths=1.6,
                         zorder=3)
            base = float(current[column].iloc[0]) * factor if len(current) else None
            for value, xi, yi in zip(ok["value"].astype(float), x, y):
                text = f"{yi:,.1f} {unit}" if unit == "d" else f"${_significant(yi)}M"
                if value == spec.current:
                    text += "\n(current)"
                elif base:
                    text += f"\n{yi / base - 1:+.1%}"
                axis.annotate(text, (xi, yi), textcoords="offset points", xytext=(0, 7), ha="center",
                              fontsize=7, linespacing=1.0)
            if spec.current is not None:
                axis.axvline(spec.current * spec.scale, color=CURRENT_COLOR, linestyle=":", linewidth=1.2, zorder=1)
            for _, row in rows[rows["status"] != "ok"].iterrows():
                axis.axvline(float(row["value"]) * spec.scale, color=NOFIT_COLOR, linewidth=6, alpha=0.25, zorder=1)
                axis.annotate("nothing fits" if row["status"] == "no_fit" else "search failed",
                              (float(row["value"]) * spec.scale, 0), textcoords="offset points", xytext=(4, 4),
                              fontsize=7, color=NOFIT_COLOR, rotation=90)
            top = float(y.max()) if len(y) else 1.0
            axis.set_ylim(0, top * 1.3 if top > 0 else 1.0)  # zero-anchored: a 3% change looks like 3%
            axis.set_ylabel(name, color=color)
            axis.set_xlabel(spec.label)
            axis.xaxis.set_major_formatter(FuncFormatter(_thousands))
            axis.set_title(spec.title, fontsize=9)
            axis.grid(True, alpha=0.3)
            values = rows["value"].astype(float) * spec.scale
            if len(values):
                span = float(values.max() - values.min()) or max(abs(float(values.max())), 1.0)
                axis.set_xlim(float(values.min()) - 0.1 * span, float(values.max()) + 0.1 * span)
    legend = [Line2D([], [], color=TIME_COLOR, marker="o", label="time to train"),
              Line2D([], [], color=COST_COLOR, marker="o", label="cost"),
              Line2D([], [], color="0.3", marker="o", linestyle="none", markerfacecolor="white",
                     label="best plan differs from the option's own"),
              Line2D([], [], color=CURRENT_COLOR, linestyle=":", label="the option's current value"),
              Line2D([], [], color=NOFIT_COLOR, linewidth=6, alpha=0.25, label="no plan fits / search failed")]
    figure.legend(handles=legend, loc="lower center", ncol=5, fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.01))
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(figure, stem)


OFFSETS = ((7, 3, "left", "bottom"), (7, -3, "left", "top"), (-7, 3, "right", "bottom"), (-7, -3, "right", "top"),
           (0, 9, "center", "bottom"), (0, -9, "center", "top"))
"""Where a point's label may go, in points from the point, tried in this order."""


def _place_labels(figure, axis, points: list[tuple[tuple[float, float], str]]) -> None:
    """Label each point at the first offset where its text overlaps no label placed before it and no
    other point, so that options close together on the chart stay readable (first fit, then the
    least-overlapping offset)."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    placed = []
    markers = [axis.transData.transform(xy) for xy, _ in points]
    for xy, text in points:
        best, best_overlap = None, None
        for dx, dy, ha, va in OFFSETS:
            label = axis.annotate(text, xy, textcoords="offset points", xytext=(dx, dy), ha=ha, va=va,
                                  fontsize=8, linespacing=1.1)
            box = label.get_window_extent(renderer).expanded(1.02, 1.05)
            overlap = sum(_area(box, other) for other in placed) + sum(
                box.width * box.height for mx, my in markers
                if box.x0 - 4 < mx < box.x1 + 4 and box.y0 - 4 < my < box.y1 + 4)
            if best_overlap is None or overlap < best_overlap:
                if best is not None:
                    best[0].remove()
                best, best_overlap = (label, box), overlap
            else:
                label.remove()
            if overlap == 0:
                break
        placed.append(best[1])


def _area(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def _significant(value: float) -> str:
    """Three significant figures, so $1.25M and $47.6M both show what separates neighbouring points."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:#.3g}"


def _thousands(value: float, _position) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 or float(value).is_integer() else f"{value:g}"


def _gpus(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "? GPUs"
    return "? GPUs" if math.isnan(number) else f"{int(number):,} GPUs"
