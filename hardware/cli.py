"""``plan-search hardware list|show``: browse the shipped presets and inspect a cluster.

The main CLI mounts :data:`app`; errors are raised as :class:`~hardware.errors.InputError` and printed
as one line by the top-level command.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from .loader import load_cluster
from .preset_catalog import gpu_preset_names, list_presets, short_names
from .schema import ClusterSpec, CollectiveEfficiency

app = typer.Typer(help="GPU and cluster presets.", no_args_is_help=True)


def _console() -> Console:
    # Created per call so output goes to the sys.stdout in force now (CliRunner swaps it).
    return Console(width=160, soft_wrap=False)


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


@app.command("list")
def list_command() -> None:
    """Table of GPU presets with units; cluster names are <short>x<GPUs>, e.g. h100x1024."""
    table = Table(title="GPU presets (dense peaks; bandwidth per direction)")
    for header in ("preset", "cluster prefix", "memory GiB", "HBM TB/s", "BF16 TFLOP/s", "FP8 TFLOP/s",
                   "scale-up GB/s", "domain GPUs", "GPUs/node", "NICs x Gb/s", "TDP W"):
        text = header in ("preset", "cluster prefix")
        table.add_column(header, justify="left" if text else "right", no_wrap=text)
    prefixes = {preset: short for short, preset in short_names().items()}
    for name in gpu_preset_names():
        spec = load_cluster(name)
        gpu, topo = spec.gpu, spec.topology
        scaleup = _num(topo.scaleup_GBps) + ("/link mesh" if topo.scaleup_kind == "mesh" else "")
        table.add_row(name, f"{prefixes[name]}x<N>", _num(gpu.memory_gib, 1), _num(gpu.hbm_GBps / 1000, 2),
                      _num(gpu.peak_tflops_bf16), _num(gpu.peak_tflops_fp8), scaleup, str(topo.scaleup_domain_gpus),
                      str(topo.gpus_per_node), f"{topo.nics_per_node} x {topo.nic_GBps * 8:,.0f}", _num(gpu.tdp_w))
    console = _console()
    console.print(table)
    console.print("Examples: " + ", ".join(n for n in list_presets() if n not in gpu_preset_names())
                  + "  (N = total GPUs, a whole number of nodes)")


@app.command("show")
def show_command(name: str = typer.Argument(..., help="Preset (h100-sxm), cluster (h100x1024) or YAML file.")) -> None:
    """Every field of a preset, cluster name or cluster file, with units and derived totals."""
    spec = load_cluster(name)
    console = _console()
    console.print(_cluster_table(spec))


def _cluster_table(spec: ClusterSpec) -> Table:
    gpu, topo, econ = spec.gpu, spec.topology, spec.economics
    table = Table(title=f"{spec.name}: {spec.num_gpus:,} x {gpu.name}")
    table.add_column("field")
    table.add_column("value", justify="right")
    table.add_column("unit")
    rows = [
        ("gpu.memory_gib", _num(gpu.memory_gib, 1), "GiB usable"),
        ("gpu.hbm_GBps", _num(gpu.hbm_GBps), "GB/s"),
        ("gpu.peak_tflops_bf16", _num(gpu.peak_tflops_bf16, 1), "TFLOP/s dense"),
        ("gpu.peak_tflops_fp8", _num(gpu.peak_tflops_fp8, 1), "TFLOP/s dense"),
        ("gpu.peak_tflops_fp4", _num(gpu.peak_tflops_fp4, 1), "TFLOP/s dense"),
        ("gpu.gemm_efficiency", _num(gpu.gemm_efficiency, 2), "fraction of peak"),
        ("gpu.attention_efficiency", _num(gpu.attention_efficiency, 2), "fraction of peak"),
        ("gpu.hbm_efficiency", _num(gpu.hbm_efficiency, 2), "fraction of HBM peak"),
        ("gpu.tdp_w", _num(gpu.tdp_w), "W"),
        ("topology.num_nodes", f"{topo.num_nodes:,}", "nodes"),
        ("topology.gpus_per_node", str(topo.gpus_per_node), "GPUs"),
        ("total GPUs", f"{spec.num_gpus:,}", "GPUs"),
        ("topology.scaleup_domain_gpus", str(topo.scaleup_domain_gpus), "GPUs"),
        ("topology.scaleup_kind", topo.scaleup_kind, ""),
        ("topology.scaleup_GBps", _num(topo.scaleup_GBps), "GB/s per direction " + ("per link" if topo.scaleup_kind == "mesh" else "per GPU")),
        ("topology.nics_per_node", str(topo.nics_per_node), "NICs"),
        ("topology.nic_GBps", f"{topo.nic_GBps:,.1f} (= {topo.nic_GBps * 8:,.0f} Gb/s)", "GB/s per NIC per direction"),
        ("scale-out per GPU", _num(topo.scaleout_GBps_per_gpu, 1), "GB/s per direction (derived)"),
        ("topology.scaleout_oversubscription", _num(topo.scaleout_oversubscription, 2), "x"),
        ("topology.scaleup_latency_us", _num(topo.scaleup_latency_us, 1), "us per step"),
        ("topology.scaleout_latency_us", _num(topo.scaleout_latency_us, 1), "us per step"),
        ("topology.nvls", "yes" if topo.nvls else "no", "NVLink SHARP"),
        ("topology.nvls_efficiency", _num(topo.nvls_efficiency, 2), "busbw / (2 x scale-up)"),
    ]
    for level in ("scaleup_efficiency", "scaleout_efficiency"):
        eff = getattr(topo, level)
        for kind in CollectiveEfficiency.model_fields:
            rows.append((f"topology.{level}.{kind}", _num(getattr(eff, kind), 2), "fraction of line rate"))
    rows += [
        ("economics.price_per_gpu_hour_usd", _num(econ.price_per_gpu_hour_usd, 2), "USD per GPU-hour"),
        ("economics.power_per_gpu_w", _num(econ.power_per_gpu_w), "W all-in per GPU"),
        ("economics.pue", _num(econ.pue, 2), "x"),
    ]
    # goodput inputs (cost_model.goodput): failure rates, restart times, checkpoint storage
    rows += [(f"reliability.{name}", f"{value:.3g}", "per GPU-hour" if "gpu_hour" in name else "per node-hour"
              if "node_hour" in name else "h" if name.endswith("_h") else "s")
             for name, value in spec.reliability.model_dump().items()]
    rows += [(f"storage.{name}", _num(value), "GB/s") for name, value in spec.storage.model_dump().items()]
    for row in rows:
        table.add_row(*row)
    return table
