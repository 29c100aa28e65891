"""The shipped GPU/node presets and the ``<short>x<N>`` cluster names built from them.

Each ``presets/<name>.yaml`` describes one GPU and the node it ships in::

    short: h100            # prefix for cluster names: h100x1024 = 1,024 GPUs = 128 nodes
    gpu: {...}             # GPUSpec fields
    node: {...}            # TopologySpec fields except num_nodes
    economics: {...}       # EconomicsSpec fields
    reliability: {...}     # ReliabilitySpec fields (optional; absent = the schema's Llama 3 defaults)
    storage: {...}         # StorageSpec fields (optional)

Cluster names are parsed, not listed: ``h100x1024``, ``gb200x144``, ``mi300xx64`` work for any GPU count
that is a whole number of nodes.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from .errors import InputError, did_you_mean
from .yaml_input import load_yaml_text

EXAMPLE_CLUSTER_SIZES = {"h100": (1024, 8192), "gb200": (72,), "mi300x": (64,)}


@lru_cache(maxsize=None)
def _raw_presets() -> dict[str, dict[str, Any]]:
    """Read every shipped preset once (package data, so it works from a wheel too)."""
    found: dict[str, dict[str, Any]] = {}
    for entry in sorted((resources.files("hardware") / "presets").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            found[entry.name.removesuffix(".yaml")] = load_yaml_text(entry.read_text(encoding="utf-8"),
                                                                     f"hardware/presets/{entry.name}")
    return found


def gpu_preset_names() -> list[str]:
    """Names of the shipped GPU/node presets, e.g. 'h100-sxm'."""
    return list(_raw_presets())


def short_names() -> dict[str, str]:
    """Cluster-name prefix -> GPU preset name, e.g. 'h100' -> 'h100-sxm'."""
    return {raw["short"]: name for name, raw in _raw_presets().items()}


def gpu_preset(name: str) -> dict[str, Any]:
    """A deep copy of one GPU preset (keys short, gpu, node, economics); unknown name -> KeyError."""
    return copy.deepcopy(_raw_presets()[name])


def list_presets() -> list[str]:
    """GPU preset names plus a few example cluster names (any ``<short>x<N>`` works)."""
    examples = [f"{short}x{n}" for short, sizes in EXAMPLE_CLUSTER_SIZES.items() for n in sizes]
    return gpu_preset_names() + examples


def parse_cluster_name(name: str) -> tuple[str, int] | None:
    """'h100x1024' -> ('h100-sxm', 1024); None when the name is not of the form <short>x<digits>."""
    for short, preset in sorted(short_names().items(), key=lambda kv: -len(kv[0])):
        match = re.fullmatch(re.escape(short) + r"x(\d+)", name)
        if match:
            return preset, int(match.group(1))
    return None


def preset_cluster_data(name: str, source: str = "preset") -> dict[str, Any]:
    """ClusterSpec input (name, gpu, topology, economics) for a GPU preset (one node) or a cluster name."""
    key = name.strip().lower()
    if key in _raw_presets():
        preset_name, num_gpus = key, None
    else:
        parsed = parse_cluster_name(key)
        if parsed is None:
            raise InputError(source, name, f"unknown hardware preset{did_you_mean(key, _suggestions(key))}",
                             "run 'plan-search hardware list' for GPU presets; clusters are <gpu>x<GPUs>, e.g. h100x1024")
        preset_name, num_gpus = parsed
    raw = gpu_preset(preset_name)
    per_node = int(raw["node"]["gpus_per_node"])
    if num_gpus is None:
        num_gpus = per_node
    if num_gpus <= 0 or num_gpus % per_node:
        lower = max(per_node, num_gpus // per_node * per_node)
        raise InputError(source, name, f"{num_gpus} GPUs is not a whole number of {per_node}-GPU {preset_name} nodes",
                         f"use {lower} or {lower + per_node}" if num_gpus > per_node else f"use a multiple of {per_node}")
    topology = dict(raw["node"], num_nodes=num_gpus // per_node)
    data = {"name": key, "gpu": raw["gpu"], "topology": topology, "economics": raw.get("economics") or {}}
    for section in ("reliability", "storage"):  # optional: absent = the schema's published defaults
        if raw.get(section):
            data[section] = raw[section]
    return data


def _suggestions(key: str) -> list[str]:
    """Candidate names for did-you-mean: GPU presets, and every <short>x<N> with the user's N if it had one."""
    digits = re.search(r"(\d+)$", key)
    counts = [digits.group(1)] if digits else ["1024"]
    return gpu_preset_names() + [f"{short}x{n}" for short in short_names() for n in counts]
