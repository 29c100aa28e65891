"""Figures of a what-if study (matplotlib, Agg backend, written as PNG and SVG).

Files are byte-for-byte reproducible: the SVG gets a fixed hash salt and no date, the PNG no software
tag, so a rerun on the same inputs does not show up as a change in version control.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

FORMATS = ("png", "svg")


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


def pareto_plot(options: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """Cost (US$ millions) against time-to-train (days), one point per cluster option's best plan; the
    options on the cost-vs-time Pareto frontier are joined by a line. Uses the columns ``option``,
    ``time_to_train_days``, ``cost_usd`` and ``pareto`` (bool) of the rows with a plan."""
    ok = options[options["status"] == "ok"]
    figure, axis = plt.subplots(figsize=(7.5, 5))
    front = ok[ok["pareto"]].sort_values("time_to_train_days")
    dominated = ok[~ok["pareto"]]
    axis.scatter(dominated["time_to_train_days"], dominated["cost_usd"] / 1e6, s=50, color="0.55",
                 label="dominated option", zorder=3)
    axis.scatter(front["time_to_train_days"], front["cost_usd"] / 1e6, s=70, color="tab:blue",
                 label="Pareto frontier", zorder=4)
    axis.plot(front["time_to_train_days"], front["cost_usd"] / 1e6, color="tab:blue", linewidth=1.5, zorder=2)
    for _, row in ok.iterrows():
        axis.annotate(row["option"], (row["time_to_train_days"], row["cost_usd"] / 1e6),
                      textcoords="offset points", xytext=(6, 5), fontsize=8)
    axis.set_xlabel("time to train (days)")
    axis.set_ylabel("cost (US$ millions)")
    axis.set_title(title, fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8, loc="best")
    return _save(figure, stem)


def sensitivity_plot(sensitivity: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """One panel per studied parameter: time-to-train (days, left axis) and cost (US$ millions, right
    axis) against the parameter's value, with the best plan's label at each point. Uses the columns
    ``study``, ``value``, ``time_to_train_days``, ``cost_usd``, ``plan`` and ``status``."""
    studies = list(dict.fromkeys(sensitivity["study"]))
    figure, axes = plt.subplots(len(studies), 1, figsize=(7.5, 3.6 * len(studies)), squeeze=False)
    for axis, study in zip(axes[:, 0], studies):
        rows = sensitivity[(sensitivity["study"] == study)]
        ok = rows[rows["status"] == "ok"]
        axis.plot(ok["value"], ok["time_to_train_days"], marker="o", color="tab:blue", label="days")
        axis.set_xlabel(study)
        axis.set_ylabel("time to train (days)", color="tab:blue")
        axis.grid(True, alpha=0.3)
        for _, row in ok.iterrows():
            axis.annotate(_short(row["plan"]),
                          (row["value"], row["time_to_train_days"]), textcoords="offset points",
                          xytext=(4, 6), fontsize=7)
        for _, row in rows[rows["status"] != "ok"].iterrows():
            axis.axvline(row["value"], color="tab:red", linestyle=":", linewidth=1)
            axis.annotate("no fit", (row["value"], axis.get_ylim()[1]), fontsize=7, color="tab:red",
                          xytext=(3, -10), textcoords="offset points")
        if ok["cost_usd"].notna().any():
            twin = axis.twinx()
            twin.plot(ok["value"], ok["cost_usd"] / 1e6, marker="s", linestyle="--", color="tab:orange")
            twin.set_ylabel("cost (US$ millions)", color="tab:orange")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, stem)


def _short(plan: str) -> str:
    """The parallel degrees of a plan label ('tp8 pp16 dp32 cp1 ...' -> 'tp8 pp16 dp32 cp1')."""
    return " ".join(str(plan).split()[:4])
