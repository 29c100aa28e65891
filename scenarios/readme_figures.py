"""Regenerate the figures the README quotes from the commands that produce them, and check they match.

A number copied into a document by hand goes stale the day the cost model changes (the README once
said B200 x 4096 trains Llama 3 405B in 81.6 days for $40.1M while the tool said 96.9 days and
$47.64M). So each quoted output lives between two markers in README.md::

    <!-- figures:procurement -->
    ...generated text...
    <!-- /figures:procurement -->

and this module reruns the command behind each block and rewrites (``--write``) or checks (the default;
exit status 1 naming the stale blocks) what sits between the markers. ``tests/test_readme_figures.py``
runs the check, so a change that moves a quoted figure fails the tests until the README is regenerated::

    python -m scenarios.readme_figures --write

Blocks:

* ``search``: ``plan-search examples/cluster.yaml examples/model.yaml --top 5``, as printed;
* ``no-fit``: ``plan-search h100x8 llama3-405b --seq-len 8192 --global-batch 64`` (nothing fits);
* ``serve``: ``plan-search serve h100x8 llama3-70b chat-1k-1k --price 2.5 --top 3``, as printed;
* ``procurement``: the bundled what-if study (``scenarios/examples/procurement_405b.yaml``): every
  option's best plan, nominal days, ETTR, effective days and cost, average MW, and the frontier of
  effective days and cost, as the study's ``summary.md`` has them;
* ``serving-calibration``: the serving parameters and the leave-one-source-out errors that ``plan-search
  calibrate --serving --write`` stored in ``cost_model/calibration/serving_fitted.yaml``;
* ``calibration``: the fitted parameters and the leave-one-source-out errors that ``plan-search
  calibrate --write`` stored in ``cost_model/calibration/fitted.yaml``.

Wall-clock figures ("searched in 0.11 s") differ from run to run; the check compares them as ``<t>``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
STUDY = ROOT / "scenarios" / "examples" / "procurement_405b.yaml"
WALL_CLOCK = re.compile(r"(searched in )[0-9.]+( s)")


@dataclass(frozen=True)
class Block:
    name: str
    generate: Callable[[], str]
    """The block's text (Markdown), without the markers."""


def command_output(args: list[str], expected_status: int) -> str:
    """What ``plan-search ARGS`` prints (stdout, then stderr), run from the repository root as a user
    would run it, with trailing blanks cut. The README states the exit status beside each example, so
    any other status is an error (ValueError), never a block quietly holding a failure."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run([sys.executable, "-c", "from optimizer.entry import main; main()", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    if done.returncode != expected_status:
        raise ValueError(f"plan-search {' '.join(args)} exited {done.returncode}, not {expected_status}: "
                         + " ".join(text.split())[-300:])
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def _console(args: list[str], expected_status: int) -> str:
    return "```\n$ plan-search " + " ".join(args) + "\n" + command_output(args, expected_status) + "\n```"


def search_block() -> str:
    return _console(["examples/cluster.yaml", "examples/model.yaml", "--top", "5"], 0)


def no_fit_block() -> str:
    return _console(["h100x8", "llama3-405b", "--seq-len", "8192", "--global-batch", "64"], 1)


def serve_block() -> str:
    return _console(["serve", "h100x8", "llama3-70b", "chat-1k-1k", "--price", "2.5", "--top", "3"], 0)


def procurement_block() -> str:
    """The bundled study's options, frontier and the options it beats, from a fresh run of the study."""
    from .procurement import load_study, run_study

    result = run_study(load_study(STUDY), workers=1)
    options = result.options
    lines = [f"Result of `plan-search whatif {STUDY.relative_to(ROOT).as_posix()}` with the file's illustrative "
             "prices:", "",
             "| option | GPUs | $/GPU-h | best plan | days | ETTR | effective days | effective cost $M | MW | frontier |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|:---:|"]
    for _, row in options.iterrows():
        if row["status"] != "ok":
            lines.append(f"| {row['option']} | {int(row['num_gpus']):,} | {row['price_per_gpu_hour_usd']:.2f} | "
                         f"{row['status']} | | | | | | |")
            continue
        lines.append(f"| {row['option']} | {int(row['num_gpus']):,} | {row['price_per_gpu_hour_usd']:.2f} | "
                     f"`{' '.join(str(row['plan']).split()[:4])}` | {row['time_to_train_days']:.1f} | "
                     f"{row['ettr']:.1%} | {row['effective_time_to_train_days']:.1f} | "
                     f"{row['effective_cost_usd'] / 1e6:.2f} | {row['power_mw']:.1f} | {'yes' if row['pareto'] else ''} |")
    ok = options[options["status"] == "ok"]
    front = ok[ok["pareto"]].sort_values("effective_time_to_train_days")
    lines += ["", "On the frontier of effective days and cost (failures, checkpoints and restarts counted; no other "
              "option is both faster and cheaper), fastest first:", ""]
    lines += [f"* {row['option']}: {row['effective_time_to_train_days']:.1f} effective days for "
              f"${row['effective_cost_usd'] / 1e6:.2f}M;" for _, row in front.iterrows()]
    if lines[-1].endswith(";"):
        lines[-1] = lines[-1][:-1] + "."
    others = [str(o) for o in ok.loc[~ok["pareto"], "option"]]
    if others:
        lines += ["", f"The other options ({', '.join(others)}) are each beaten on both time and cost."]
    return "\n".join(lines)


def calibration_block() -> str:
    """The stored calibration (``cost_model/calibration/fitted.yaml``, written by ``plan-search calibrate
    --write``): every fitted parameter against its prior, and each source's error with every source in
    the fit and with that source left out."""
    from cost_model.calibration.calibrate import RankingGroup, ranking_lines
    from cost_model.calibration.stored import FITTED_FILE
    from hardware.errors import read_yaml_mapping

    document = read_yaml_mapping(FITTED_FILE)
    lines = ["| parameter | prior | fitted | runs | what it is |", "|---|---:|---:|---:|---|"]
    for name, entry in document["parameters"].items():
        lines.append(f"| `{name}` | {entry['prior']:g} | {entry['value']:.3g} | {entry['rows']} | {entry['meaning']} |")
    cross = document["cross_validation"]
    lines += ["", "| source | runs | fitted median \\|error\\| | held-out median \\|error\\| | held-out signed |",
              "|---|---:|---:|---:|---:|"]
    for source in cross["sources"]:
        lines.append(f"| `{source['source_group']}` | {source['rows']} | {source['fitted_median_abs_error']:.1%} | "
                     f"{source['held_out_median_abs_error']:.1%} | {source['held_out_median_signed_error']:+.1%} |")
    overall = cross["overall"]
    lines += ["", f"All {overall['rows']} runs: fitted median |error| {overall['fitted_median_abs_error']:.1%}; "
              f"leave-one-source-out median |error| {overall['held_out_median_abs_error']:.1%}, signed "
              f"{overall['held_out_median_signed_error']:+.1%}, {overall['held_out_rows_beyond_25pct']} runs beyond 25%, "
              f"worst source {overall['worst_source_median_abs_error']:.1%}. Layout ranking within "
              f"{overall['ranking_groups']} groups of at least 4 layouts: median Kendall tau "
              f"{overall['median_kendall_tau']:.2f}, the measured best in the predicted top 3 in "
              f"{overall['groups_with_best_in_top3']}."]
    below = ranking_lines([RankingGroup.from_record(g) for g in cross["rankings"]])
    if below:
        lines += ["", "Groups under tau 0.8:", "", *(f"* {line.strip()}" for line in below)]
    return "\n".join(lines)


def serving_calibration_block() -> str:
    """The stored serving calibration (``cost_model/calibration/serving_fitted.yaml``): every fitted
    parameter against its prior, the issue's targets and each source's error with that source left out."""
    from cost_model.serving.options import SERVING_FITTED_FILE
    from hardware.errors import read_yaml_mapping

    document = read_yaml_mapping(SERVING_FITTED_FILE)
    lines = ["| parameter | prior | fitted | observations | what it is |", "|---|---:|---:|---:|---|"]
    for name, entry in document["parameters"].items():
        lines.append(f"| `{name}` | {entry['prior']:g} | {entry['value']:.3g} | {entry['rows']} | {entry['meaning']} |")
    targets = document["cross_validation"]["targets"]
    lines += ["", "| quantity (held out) | observations | median \\|error\\| | target |", "|---|---:|---:|---:|"]
    names = {"max_load_dense": "max-load output tokens/s/GPU, dense", "max_load_moe": "max-load output tokens/s/GPU, MoE",
             "tpot_at_layout_and_batch": "TPOT at a layout and batch", "ttft_low_load": "TTFT at low load (one request)",
             "ttft_static_batches": "prompt time at every static batch"}
    for key, label in names.items():
        entry = targets[key]
        target = f"≤ {entry['target']:.0%}" if "target" in entry else ""
        lines.append(f"| {label} | {entry['rows']} | {entry['median_abs_error']:.1%} | {target} |")
    pairs, fit = targets["gpu_generation_pairs"], targets["published_configurations_fit"]
    lines += ["", f"GPU generations ordered as measured in {pairs['ordered']} of {pairs['pairs']} pairs "
              f"({pairs['share']:.0%}; target ≥ {pairs['target']:.0%}); {fit['fit']} of {fit['runs']} published "
              "configurations predicted to fit.", "",
              "| source | observations | fitted median \\|error\\| | held-out median \\|error\\| | held-out signed |",
              "|---|---:|---:|---:|---:|"]
    for source in document["cross_validation"]["sources"]:
        lines.append(f"| `{source['source_group']}` | {source['rows']} | {source['fitted_median_abs_error']:.1%} | "
                     f"{source['held_out_median_abs_error']:.1%} | {source['held_out_median_signed_error']:+.1%} |")
    return "\n".join(lines)


BLOCKS = (Block("search", search_block), Block("no-fit", no_fit_block), Block("serve", serve_block),
          Block("procurement", procurement_block), Block("calibration", calibration_block),
          Block("serving-calibration", serving_calibration_block))


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"


def current_block(text: str, name: str) -> str:
    """What README text holds between a block's markers (ValueError when they are missing or repeated)."""
    start, end = _markers(name)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"README.md must hold exactly one {start} ... {end} pair")
    return text[text.index(start) + len(start): text.index(end)].strip("\n")


def replace_block(text: str, name: str, body: str) -> str:
    """README text with a block's contents replaced by ``body``."""
    current_block(text, name)  # checks the markers
    start, end = _markers(name)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def comparable(text: str) -> str:
    """Text with the wall-clock figures masked, for comparison."""
    return WALL_CLOCK.sub(r"\1<t>\2", text)


def stale_blocks(text: str, generated: dict[str, str]) -> list[str]:
    """The names of the blocks whose README text differs from the generated text (wall clock aside)."""
    return [name for name, body in generated.items() if comparable(current_block(text, name)) != comparable(body)]


def generate(names: list[str] | None = None) -> dict[str, str]:
    return {block.name: block.generate() for block in BLOCKS if names is None or block.name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenarios.readme_figures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the blocks of README.md")
    parser.add_argument("--readme", type=Path, default=README, help="the Markdown file (default: README.md)")
    parser.add_argument("blocks", nargs="*", help=f"blocks to regenerate (default: all of {[b.name for b in BLOCKS]})")
    args = parser.parse_args(argv)
    known = [b.name for b in BLOCKS]
    for name in args.blocks:
        if name not in known:
            parser.error(f"unknown block {name!r}; known blocks: {', '.join(known)}")
    text = args.readme.read_text(encoding="utf-8")
    try:
        generated = generate(args.blocks or None)
        stale = stale_blocks(text, generated)
    except ValueError as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 2
    if args.write:
        for name in stale:
            text = replace_block(text, name, generated[name])
        args.readme.write_text(text, encoding="utf-8")
        print(f"{args.readme}: rewrote {', '.join(stale) if stale else 'nothing (every block is current)'}")
        return 0
    if stale:
        print(f"{args.readme}: stale blocks: {', '.join(stale)}; run python -m scenarios.readme_figures --write",
              file=sys.stderr)
        return 1
    print(f"{args.readme}: {len(generated)} blocks match the commands")
    return 0


if __name__ == "__main__":
    sys.exit(main())
