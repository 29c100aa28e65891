"""Hardware layer of plan-search: GPU/cluster descriptions, presets, collective timing and rank placement.

Lowest layer of the package: ``cost_model`` and ``optimizer`` import from here, never the reverse.
"""

from .collectives import Collective, bus_bandwidth_GBps, collective_time_s
from .errors import InputError, did_you_mean, read_yaml_mapping
from .loader import load_cluster
from .placement import (DEFAULT_RANK_ORDER, GroupPlacement, dense_placement, expert_placement,
                        parse_rank_order)
from .preset_catalog import list_presets
from .schema import ClusterSpec, CollectiveEfficiency, EconomicsSpec, GPUSpec, TopologySpec

__all__ = [
    "ClusterSpec", "Collective", "CollectiveEfficiency", "DEFAULT_RANK_ORDER", "EconomicsSpec", "GPUSpec",
    "GroupPlacement", "InputError", "TopologySpec", "bus_bandwidth_GBps", "collective_time_s",
    "dense_placement", "did_you_mean", "expert_placement", "list_presets", "load_cluster", "parse_rank_order",
    "read_yaml_mapping",
]
