"""One plan, resolved into the knobs every launcher needs: the shared plan -> knobs translation.

The cost model prices a plan as columns (:mod:`cost_model.plan`) plus the training setup
(:mod:`cost_model.training_spec`) and the cost options (CP communication, rank order). A launcher needs
the same facts resolved: how many layers each pipeline stage holds, how many layers full recompute
reruns per virtual chunk, how many micro-batches one step runs, which MoE dispatcher and graphs the
plan was priced with. :func:`build_knobs` resolves them once, so the three emitters
(:mod:`.megatron_lm`, :mod:`.megatron_bridge`, :mod:`.torchtitan`) translate the same numbers into
their own words and never re-derive them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cost_model.ep_overlap import megatron_accepts_overlap
from cost_model.model_spec import ModelSpec
from cost_model.plan import (BY_VPP, FULL, PLAN_DEFAULTS, RECOMPUTE_MODES, SCHEDULES, SELECTIVE, PlanArrays, module_mask,
                             module_names)
from cost_model.stages import chunk_layers, layers_per_stage
from cost_model.training_spec import TrainingSpec
from hardware.placement import DEFAULT_RANK_ORDER


@dataclass(frozen=True)
class LaunchKnobs:
    """Every knob of a priced plan, resolved to the values a launcher writes."""

    model: ModelSpec
    """The model the plan was priced for (the launchers also need its dimensions)."""
    training: TrainingSpec
    """The training setup the plan was priced with (batch, precision, MoE dispatcher, graphs, overlaps)."""
    tp: int
    """Tensor-parallel degree."""
    pp: int
    """Pipeline stages."""
    dp: int
    """Data-parallel replicas (the ZeRO/FSDP sharding group is dp x cp)."""
    cp: int
    """Context-parallel degree."""
    ep: int
    """Expert-parallel degree (1 for dense models)."""
    etp: int
    """Expert tensor-parallel degree."""
    vpp: int
    """Virtual pipeline stages (model chunks) per pipeline rank; 1 = no interleaving."""
    micro_batch: int
    """Sequences per micro-batch."""
    num_microbatches: int
    """Micro-batches per step on each data-parallel replica: global batch / (dp x micro-batch)."""
    sequence_parallel: bool
    """Megatron sequence parallelism (activations outside TP regions split over tp)."""
    recompute: str
    """``none``, ``selective`` or ``full``."""
    recompute_modules: tuple[str, ...]
    """With selective recompute: Megatron's ``--recompute-modules`` names."""
    recompute_layers_per_chunk: int
    """With full recompute: layers rerun in each virtual chunk (Megatron's ``block`` method); 0 otherwise."""
    stage_layers: tuple[int, ...]
    """Transformer layers on each pipeline stage, first to last (the priced split: an uneven split puts
    the remainder on the first and last stages, :func:`cost_model.stages.layers_per_stage`)."""
    stage_chunks: tuple[tuple[int, ...], ...]
    """Decoder layers of each virtual chunk of each stage, first stage first, chunk 0 first (the priced chunk
    split, :func:`cost_model.stages.chunk_layers`: even, the short chunks where the embedding and the loss
    sit). One chunk per stage without interleaving; under a V schedule (``zbv``, ``dualpipev``) rank r's
    chunks r and 2pp-1-r, so rank 0 holds both short end chunks."""
    zero_stage: int
    """0 = replicated (DDP), 1 = optimizer state sharded, 2 = + gradients, 3 = + weights (FSDP)."""
    optimizer_offload: bool
    """Optimizer state and step on the host."""
    activation_offload_layers: int
    """Layers whose activations go to the host (0 = none)."""
    ep_overlap: bool
    """The EP all-to-all overlap runs (asked for, and Megatron accepts it for this layout)."""
    cp_comm_type: str
    """Context-parallel communication priced: ``p2p`` ring or ``a2a`` (Ulysses)."""
    rank_order: str
    """Order of the parallel dimensions, innermost first (``tp-cp-ep-dp-pp`` is Megatron's default)."""
    gpus_per_node: int = 8
    """GPUs per node of the cluster the plan was priced on: torchrun's processes per node (4 on a GB200
    compute tray, 8 on HGX)."""
    dp_replicate: int = 1
    """Hybrid sharding: copies of the ZeRO-sharded states across dp x cp (1 = one shard group over all)."""
    schedule: str = "1f1b"
    """Pipeline schedule, a name of :data:`cost_model.plan.SCHEDULES` (``interleaved`` where vpp > 1 and the
    plan names none)."""

    @property
    def world_size(self) -> int:
        """GPUs the plan runs on."""
        return self.tp * self.pp * self.dp * self.cp

    @property
    def uneven_pipeline(self) -> bool:
        """Whether the stages hold different numbers of layers."""
        return len(set(self.stage_layers)) > 1

    @property
    def accounted_ends(self) -> tuple[bool, bool] | None:
        """Whether the priced split is Megatron's with the embedding (first) and the loss (second) counted as
        one layer each of an even split (``account_for_embedding/loss_in_pipeline_split``: (L + e + l) / pp
        layers a rank, divisible by vpp, one fewer on the first (last) rank, in its first (last) chunk),
        and which of the two it accounts; None for an even split or one these switches cannot say."""
        if self.pp == 1 or not self.uneven_pipeline:
            return None
        middle = max(self.stage_layers)
        embedding, loss = self.stage_layers[0] == middle - 1, self.stage_layers[-1] == middle - 1
        even_chunks = middle % self.vpp == 0 and all(
            chunks == (middle // self.vpp,) * self.vpp for chunks in self.stage_chunks[1:-1])
        if not even_chunks or self.stage_layers[-1] not in (middle, middle - 1) or not embedding:
            return None
        return embedding, loss

    def plan_arrays(self) -> PlanArrays:
        """The resolved plan as a one-plan :class:`cost_model.plan.PlanArrays`, for the framework rules."""
        return PlanArrays.from_columns({
            "tp": self.tp, "pp": self.pp, "dp": self.dp, "cp": self.cp, "ep": self.ep, "etp": self.etp,
            "vpp": self.vpp, "micro_batch": self.micro_batch, "recompute": RECOMPUTE_MODES.index(self.recompute),
            "recompute_num_layers": self.recompute_layers_per_chunk if self.recompute == "full" else -1,
            "recompute_modules": module_mask(self.recompute_modules), "sequence_parallel": self.sequence_parallel,
            "zero_stage": self.zero_stage, "optimizer_offload": self.optimizer_offload,
            "activation_offload_layers": self.activation_offload_layers, "dp_replicate": self.dp_replicate,
            "schedule": self.schedule})

    @property
    def recompute_num_layers(self) -> int:
        """Alias of :attr:`recompute_layers_per_chunk` in Megatron's own name."""
        return self.recompute_layers_per_chunk


def build_knobs(plan: dict[str, Any], model: ModelSpec, training: TrainingSpec, *, cp_comm_type: str = "p2p",
                rank_order: str = DEFAULT_RANK_ORDER, gpus_per_node: int = 8) -> LaunchKnobs:
    """Resolve one plan (a mapping of :class:`cost_model.plan.PlanArrays` column names to numbers, as the
    CLI's and the tests' plan records are) into :class:`LaunchKnobs`."""
    values = {**PLAN_DEFAULTS, **plan}
    pp, vpp, dp, mbs = (int(values[k]) for k in ("pp", "vpp", "dp", "micro_batch"))
    recompute = values["recompute"]
    recompute = RECOMPUTE_MODES[int(recompute)] if not isinstance(recompute, str) else recompute
    first, k, last = (int(x) for x in layers_per_stage(model.num_layers, pp))
    stages = (model.num_layers,) if pp == 1 else (first, *([k] * (pp - 2)), last)
    chunks = tuple(tuple(chunk_layers(layers, vpp, "first" if rank < len(stages) - 1 or pp == 1 else "last"))
                   for rank, layers in enumerate(stages))
    schedule = values["schedule"]
    if not isinstance(schedule, str):  # a code; BY_VPP: what Megatron runs for these knobs
        schedule = ("interleaved" if vpp > 1 else "1f1b") if int(schedule) == BY_VPP else SCHEDULES[int(schedule)]
    if schedule in ("zbv", "dualpipev") and pp > 1:
        # A V: rank r holds chunks r and 2pp-1-r, so rank 0 holds both short end chunks (cost_model.stages).
        half = k // 2
        chunks = ((half - (k - first), half - (k - last)),) + ((half, k - half),) * (pp - 1)
        stages = tuple(sum(pair) for pair in chunks)
    chunk = -(-k // vpp)
    asked = int(values["recompute_num_layers"])
    layers = (chunk if asked < 0 else min(asked, chunk)) if recompute == RECOMPUTE_MODES[FULL] else 0
    modules = tuple(module_names(int(values["recompute_modules"]))) if recompute == RECOMPUTE_MODES[SELECTIVE] else ()
    ep = int(values["ep"])
    recompute_code = RECOMPUTE_MODES.index(recompute)
    # The EP overlap runs in Megatron's merged 1F1B where Megatron accepts it, and in DualPipe's F&B pairs.
    accepts = (ep > 1) if schedule in ("dualpipe", "dualpipev") else (
        schedule in ("1f1b", "interleaved") and bool(megatron_accepts_overlap(ep, recompute_code, pp, vpp)))
    overlap = bool(model.is_moe and training.overlap_moe_expert_parallel_comm and accepts)
    return LaunchKnobs(
        model=model, training=training, tp=int(values["tp"]), pp=pp, dp=dp, cp=int(values["cp"]), ep=ep,
        etp=int(values["etp"]), vpp=vpp, micro_batch=mbs,
        num_microbatches=max(training.global_batch_size // max(dp * mbs, 1), 1),
        sequence_parallel=bool(values["sequence_parallel"]), recompute=recompute, recompute_modules=modules,
        recompute_layers_per_chunk=layers, stage_layers=stages, stage_chunks=chunks, zero_stage=int(values["zero_stage"]),
        optimizer_offload=bool(values["optimizer_offload"]),
        activation_offload_layers=int(values["activation_offload_layers"]), ep_overlap=overlap,
        cp_comm_type=cp_comm_type, rank_order=rank_order, gpus_per_node=gpus_per_node,
        dp_replicate=int(values["dp_replicate"]), schedule=schedule)


def synchronous_reduce_scatter(knobs: LaunchKnobs, framework: str) -> list[str]:
    """The difference a ZeRO-2 plan priced with ``training.async_grad_reduce_scatter`` (Llama 3's FSDP,
    whose per-micro-batch gradient reduce-scatter runs on beside the next forward) runs at in a framework
    that waits for the reduce-scatter at the end of each backward."""
    if not (knobs.training.async_grad_reduce_scatter and knobs.zero_stage == 2 and knobs.dp * knobs.cp > 1):
        return []
    return [f"{framework} waits for each micro-batch's gradient reduce-scatter at the end of its backward; the plan "
            "was priced with it running on beside the next micro-batch's forward (async_grad_reduce_scatter)"]
