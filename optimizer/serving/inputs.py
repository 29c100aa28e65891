"""Command-line values of ``plan-search serve`` read into the search's terms, every bad value one
:class:`InputError` line naming the flag and the fix."""

from __future__ import annotations

import re

from cost_model.serving.plan import KV_DTYPES, MODES, WEIGHT_PRECISIONS
from cost_model.serving.rules import kv_dtype_supported, weight_precision_mode
from hardware.errors import InputError, did_you_mean, shorten
from hardware.schema import ClusterSpec, GPUSpec


def parse_gpu_budget(text: str | None, cluster: ClusterSpec) -> tuple[int, int]:
    """``--gpus N`` (at most N GPUs per plan) or ``A-B`` (between A and B); default: up to the whole cluster.

    A serving instance may be a single GPU, so counts need not be whole nodes; they cannot exceed the
    cluster, whose size is what the plan is bought from."""
    most = cluster.num_gpus
    if text is None:
        return 1, most
    example = f"write e.g. --gpus 16 (at most 16 GPUs) or --gpus 8-32 (between 8 and 32 GPUs), up to {most}"
    match = re.fullmatch(r"\s*(\d{1,9})\s*(?:-\s*(\d{1,9})\s*)?", text)
    if not match:
        raise InputError("command line", "--gpus", f"{shorten(text, 40)!r} is not a GPU count or range", example)
    low = int(match.group(1))
    high = int(match.group(2)) if match.group(2) is not None else None
    if high is None:
        low, high = 1, low
    if low > high:
        raise InputError("command line", "--gpus", f"the range {low}-{high} runs downward",
                         f"write the smaller count first: --gpus {high}-{low}")
    if low < 1:
        raise InputError("command line", "--gpus", "must be at least 1 GPU", example)
    if high > most:
        raise InputError("command line", "--gpus", f"{high:,} GPUs is more than the cluster's {most:,}",
                         f"use at most {most:,}, or a cluster of {-(-high // cluster.topology.gpus_per_node)} nodes")
    return low, high


def parse_names(flag: str, text: str | None, known: tuple[str, ...]) -> tuple[str, ...] | None:
    """A comma list of names among ``known`` (``--modes agg,disagg``), in ``known``'s order, duplicates
    dropped; None when the flag is not given."""
    if text is None:
        return None
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise InputError("command line", flag, "is empty", f"list one or more of {', '.join(known)}")
    for name in names:
        if name not in known:
            raise InputError("command line", flag, f"{name!r} is not one of {', '.join(known)}"
                             + did_you_mean(name, list(known)), f"write e.g. {flag} {','.join(known)}")
    return tuple(name for name in known if name in names)


def parse_modes(text: str | None) -> tuple[str, ...] | None:
    return parse_names("--modes", text, MODES)


def parse_precisions(text: str | None) -> tuple[str, ...] | None:
    return parse_names("--precision", text, WEIGHT_PRECISIONS)


def parse_kv_dtypes(text: str | None) -> tuple[str, ...] | None:
    return parse_names("--kv-dtype", text, KV_DTYPES)


def precision_supported(gpu: GPUSpec, precision: str) -> bool:
    """Whether the GPU serves weights of the precision, natively on its tensor cores or weight-only
    (stored low, dequantized to BF16 MMAs: Marlin / Triton kernels on NVIDIA Ampere and Hopper). The same
    test as the cost model's precision rule (:func:`cost_model.serving.rules.weight_precision_mode`), so
    the grid never offers what the rule refuses."""
    return weight_precision_mode(gpu, precision) != "unsupported"


def precision_native(gpu: GPUSpec, precision: str) -> bool:
    """Whether the GPU has tensor cores for the precision (FP8 from Hopper / MI300, FP4 from Blackwell)."""
    return weight_precision_mode(gpu, precision) == "native"


def check_supported(flag: str, names: tuple[str, ...], gpu: GPUSpec) -> None:
    """Refuse, before searching, a weight precision (``--precision``) or KV dtype (``--kv-dtype``) the user
    asked for that the GPU cannot run."""
    for name in names:
        supported = kv_dtype_supported(gpu, name) if flag in ("--kv-dtype", "kv_dtypes") else precision_supported(gpu, name)
        if not supported:
            generation = "Hopper, Ada or MI300" if name == "fp8" else "NVIDIA Ampere or newer"
            raise InputError("command line", flag, f"{name} is not served on the {gpu.name}",
                             f"drop {name} or use a cluster of {generation} GPUs")


def check_target(target_rate: float | None, target_concurrency: float | None) -> None:
    """At most one target, and a positive one."""
    if target_rate is not None and target_concurrency is not None:
        raise InputError("command line", "--target-concurrency", "is given together with --target-rate, and "
                         "each sets the load", "keep one: --target-rate (open loop) or --target-concurrency (closed loop)")
    for flag, value in (("--target-rate", target_rate), ("--target-concurrency", target_concurrency)):
        if value is not None and not value > 0:
            raise InputError("command line", flag, f"must be positive, got {value}", "fix the value")
