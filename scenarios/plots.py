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
    """Cost (US$ millions) against time-to-train (days), one point per cluster option's best plan, each
    labelled with its GPU count and price per GPU-hour; the options on the cost-vs-time Pareto frontier
    are joined by a line. Options without a plan are listed under the plot with their status, so an
    option that fits nowhere is never silently missing. Uses the columns ``option``, ``status``,
    ``num_gpus``, ``price_per_gpu_hour_usd``, ``time_to_train_days``, ``cost_usd`` and ``pareto``."""
    ok = options[options["status"] == "ok"]
    figure, axis = plt.subplots(figsize=(8.5, 5.4))
    front = ok[ok["pareto"].astype(bool)].sort_values("time_to_train_days")
    dominated = ok[~ok["pareto"].astype(bool)]
    axis.scatter(dominated["time_to_train_days"], dominated["cost_usd"] / 1e6, s=55, color="0.55",
                 label="dominated: another option is faster and cheaper", zorder=3)
    axis.scatter(front["time_to_train_days"], front["cost_usd"] / 1e6, s=75, color=TIME_COLOR,
                 label="Pareto frontier: no option is both faster and cheaper", zorder=4)
    axis.plot(front["time_to_train_days"], front["cost_usd"] / 1e6, color=TIME_COLOR, linewidth=1.5, zorder=2)
    points = [((row["time_to_train_days"], row["cost_usd"] / 1e6),
               f"{row['option']}\n{_gpus(row['num_gpus'])} at ${row['price_per_gpu_hour_usd']:.2f}/GPU-h")
              for _, row in ok.iterrows()]
    axis.set_xlabel("time to train (days)")
    axis.set_ylabel("cost (US$ millions)")
    if len(ok):
        # zero-anchored, with room for the labels right of and above the points
        axis.set_xlim(0, float(ok["time_to_train_days"].max()) * 1.3)
        axis.set_ylim(0, float(ok["cost_usd"].max()) / 1e6 * 1.2)
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
                         + ("no plan fits in memory" if row["status"] == "no_fit" else "search failed")
                         for _, row in missing.iterrows())
        figure.text(0.01, -0.02, "Not shown: " + text, fontsize=8, color=NOFIT_COLOR, ha="left", va="top",
                    wrap=True)
    return _save(figure, stem)


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
