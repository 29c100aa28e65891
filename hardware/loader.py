"""Load a cluster from a preset name or a YAML file.

``load_cluster("h100x1024")`` builds 128 DGX H100 nodes; ``load_cluster("h100-sxm")`` one node;
``load_cluster("my-cluster.yaml")`` reads a file. Cluster files look like this (every section optional
except that the result must name a GPU and a node count)::

    name: my-h100-cluster          # optional; defaults to the file name
    gpu: h100-sxm                  # a GPU preset name ...
    # gpu: {preset: h100-sxm, memory_gib: 75}   # ... or a preset with some fields changed ...
    # gpu: {name: X, memory_gib: ..., ...}      # ... or every GPUSpec field spelled out
    topology:
      num_nodes: 128               # required unless a cluster preset gives it
      nic_gbps: 200                # any TopologySpec field overrides the GPU preset's node description;
                                   # nic_gbps (gigabits/s) or nic_GBps (gigabytes/s), not both
      scaleup_efficiency: {all_to_all: 0.4}   # nested sections are merged field by field
    economics:
      price_per_gpu_hour_usd: 2.49

or start from a whole cluster preset and change parts of it::

    preset: h100x1024
    topology: {scaleout_oversubscription: 2}

Every problem -- missing file, a file that is not a mapping, an unknown preset or field, a zero or
negative bandwidth, a fractional node count -- raises one :class:`~hardware.errors.InputError` line
naming the file and the dotted field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import InputError, read_yaml_mapping
from .preset_catalog import preset_cluster_data
from .schema import ClusterSpec, _set_dotted, validate_cluster
from .yaml_input import names_existing_file

_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def load_cluster(source: str | Path) -> ClusterSpec:
    """A validated ClusterSpec from a YAML/JSON file path or a preset name ('h100x1024', 'h100-sxm')."""
    name = str(source)
    if not isinstance(source, Path) and not name.strip():
        raise InputError("cluster", "", "the cluster name is empty",
                         "give a preset such as h100x64 (plan-search hardware list) or a cluster YAML path")
    if isinstance(source, Path) or _looks_like_path(name):
        return _load_file(Path(source))
    return validate_cluster(preset_cluster_data(name, source="preset"), f"preset {name}")


def _looks_like_path(text: str) -> bool:
    """A file suffix or a directory separator, or the name of an existing file (never raises: a name no
    file system accepts is then looked up as a preset and reported as unknown)."""
    return text.lower().endswith(_FILE_SUFFIXES) or "/" in text or "\\" in text or names_existing_file(text)


def _load_file(path: Path) -> ClusterSpec:
    data = read_yaml_mapping(path)
    where = str(path)
    base = _base_from_presets(data, where)
    user = {k: v for k, v in data.items() if k != "preset"}
    if isinstance(user.get("gpu"), str):
        user.pop("gpu")  # consumed by _base_from_presets
    elif isinstance(user.get("gpu"), dict):
        user["gpu"] = {k: v for k, v in user["gpu"].items() if k != "preset"}
    base.setdefault("name", path.stem)
    topology = user.get("topology")
    if isinstance(topology, dict) and "nic_GBps" in topology and "nic_gbps" in topology:
        raise InputError(where, "topology", "give nic_GBps (gigabytes/s) or nic_gbps (gigabits/s), not both",
                         "keep one; nic_gbps = 8 x nic_GBps")
    for section, value in user.items():
        if isinstance(value, dict):
            if not value and section in ("gpu", "topology"):
                continue
            for key, leaf in _flatten(value, section):
                _set_dotted(base, key, leaf, ClusterSpec, where)
        elif section in ("gpu", "topology", "economics", "reliability", "storage"):
            raise InputError(where, str(section), f"must be a mapping of fields, got {type(value).__name__}",
                             "indent 'field: value' lines under it" + (" or give a GPU preset name" if section == "gpu" else ""))
        else:
            _set_dotted(base, str(section), value, ClusterSpec, where)
    return validate_cluster(base, where)


def _base_from_presets(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Starting point: a top-level cluster/GPU preset, or the GPU preset named under gpu (its node gives topology defaults)."""
    top = data.get("preset")
    gpu = data.get("gpu")
    gpu_preset = gpu if isinstance(gpu, str) else gpu.get("preset") if isinstance(gpu, dict) else None
    if top is not None and gpu_preset is not None:
        raise InputError(where, "preset", "give either a top-level preset or a gpu preset, not both",
                         "drop one of them; override single GPU fields under 'gpu:' instead")
    if top is not None:
        if not isinstance(top, str):
            raise InputError(where, "preset", "must be a preset name", "e.g. preset: h100x1024")
        return preset_cluster_data(top, source=f"{where}: preset")
    if gpu_preset is not None:
        if not isinstance(gpu_preset, str):
            raise InputError(where, "gpu.preset", "must be a GPU preset name", "e.g. gpu: h100-sxm")
        base = preset_cluster_data(gpu_preset, source=f"{where}: gpu")
        base["topology"].pop("num_nodes")  # a GPU preset says what a node is, not how many there are
        del base["name"]
        return base
    return {}


def _flatten(mapping: dict[str, Any], prefix: str):
    """Yield (dotted key, value) for every leaf, so nested sections merge field by field."""
    for key, value in mapping.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, dotted)
        else:
            yield dotted, value
