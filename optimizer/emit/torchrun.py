"""The ``torchrun`` launcher every emitted command starts with: one process per GPU, node by node.

PyTorch's elastic launcher (``torch.distributed.run``): ``--nproc-per-node`` processes on each of
``--nnodes`` nodes; a multi-node job names its node's rank and the rendezvous host, which the user sets
per node (``$NODE_RANK``, ``$MASTER_ADDR``: left for the shell to expand).
"""

from __future__ import annotations

import math

from .knobs import LaunchKnobs

MASTER_PORT = "6000"
"""Rendezvous port (Megatron-LM's example scripts' choice)."""


def nodes(knobs: LaunchKnobs) -> tuple[int, int]:
    """(processes per node, nodes): the cluster's GPUs per node, or, for a plan on fewer GPUs than a node
    or a GPU count the node size does not divide, as many as divide the plan's GPUs."""
    world = knobs.world_size
    per_node = world if world <= knobs.gpus_per_node else math.gcd(world, knobs.gpus_per_node)
    return per_node, world // per_node


def launcher(knobs: LaunchKnobs) -> list[str]:
    """``torchrun`` with one process per GPU; several nodes rendezvous at ``$MASTER_ADDR``."""
    per_node, count = nodes(knobs)
    args = ["torchrun", "--nproc-per-node", str(per_node), "--nnodes", str(count)]
    if count > 1:
        args += ["--node-rank", "$NODE_RANK", "--master-addr", "$MASTER_ADDR", "--master-port", MASTER_PORT]
    return args
