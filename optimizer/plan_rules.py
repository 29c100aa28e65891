"""Rules on a plan's schedule and knobs, checked for many plans at once.

The layout rules (which degrees can combine on this cluster) are CP-SAT constraints in
:mod:`optimizer.layout_model`. The rules here involve the pipeline schedule (virtual stages,
micro-batch) and the memory knobs; they are per-plan predicates that numpy checks for millions of
expanded plans at once. Each rule has a name and a sentence, like the layout rules, so explanations
speak one language. ``violations`` returns, per rule, which plans break it.
"""

from __future__ import annotations

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.plan import FULL, MODULE_BIT, NONE, SELECTIVE, PlanArrays
from cost_model.schedules import DUALPIPE, DUALPIPEV, INTERLEAVED, ONE_F_ONE_B, ZB_H2, is_v_shaped
from cost_model.stages import layers_per_stage, uneven_split_is_valid
from cost_model.training_spec import TrainingSpec
from hardware.placement import DEFAULT_RANK_ORDER

from .emit import FRAMEWORKS, framework_rules, framework_violations

PLAN_RULES: dict[str, str] = {
    "layers_split_over_stages_and_chunks": "layers divisible by pp x vpp, or an uneven split whose middle stages "
                                           "divide into vpp chunks and whose first and last stages hold at least "
                                           "vpp - 1 layers (an embedding-only first chunk, a loss-only last chunk: "
                                           "Megatron's account-for-embedding/loss split)",
    "global_batch_divisible_by_dp_micro_batch": "global batch = dp x micro-batch x number of micro-batches",
    "interleave_needs_pipeline": "virtual pipeline stages need pp > 1",
    "interleave_microbatches_divisible_by_pp": "with interleaving, the number of micro-batches is a multiple of pp",
    "schedule_chunks": "1F1B, ZB-H2 and DualPipe run one chunk a rank (vpp = 1), interleaved more than one, ZB-V "
                       "and DualPipeV exactly two (a V: rank r holds chunks r and 2pp-1-r); with pp = 1 the "
                       "schedule is 1F1B",
    "v_schedule_split": "a V schedule splits each rank's layers into two chunks: the middle stages' layers are "
                        "even, and the first rank, which holds both end chunks, takes the split's whole deficit "
                        "(at most its k layers)",
    "dualpipe_ranks_and_microbatches": "DualPipe needs an even pp and an even number of micro-batches, at least "
                                       "2 x pp; DualPipeV at least 2 x pp micro-batches (DualPipe.step, "
                                       "DualPipeV.step asserts)",
    "sequence_parallel_needs_tp": "sequence parallelism needs tp > 1",
    "moe_with_tp_needs_sequence_parallel": "MoE layers with tp > 1 need sequence parallelism (Megatron-LM)",
    "sequence_divisible_by_cp_tp": "with sequence parallelism, the sequence per CP rank is divisible by tp",
    "zero_needs_data_parallel": "ZeRO sharding needs dp x cp > 1",
    "recompute_layers_within_chunk": "recomputed layers do not exceed the layers of a virtual chunk",
    "recompute_modules_exist": "selective recompute names only modules the model has (mla_up_proj: MLA; "
                               "mlp: dense layers; moe, moe_act: MoE layers; shared_experts: shared experts)",
    "expert_degrees_valid": "ep divides the experts and etp x ep divides tp x cp x dp",
    "activation_offload_valid": "activation offload needs pp = 1, no recompute and fewer offloaded layers than "
                                "the model has (Megatron-LM TransformerConfig)",
    "hybrid_sharding_divides": "hybrid sharding's copies (dp_replicate) divide dp and the expert-data-parallel "
                               "ranks (Megatron-Core parallel_state: dp x cp and edp divisible by "
                               "num_distributed_optimizer_instances; whole CP groups in each shard group)",
    "hybrid_sharding_needs_zero": "hybrid sharding (dp_replicate > 1) needs ZeRO >= 1 and a shard group of at "
                                  "least 2 ranks (without sharding, copies are plain data parallelism)",
}


def split_ok(num_layers: int, pp: np.ndarray, vpp: np.ndarray, allow_uneven: bool) -> np.ndarray:
    pp = np.asarray(pp)
    vpp = np.asarray(vpp)
    even = (num_layers % (pp * vpp) == 0) & (pp <= num_layers)
    if not allow_uneven:
        return even
    return even | ((pp >= 2) & uneven_split_is_valid(num_layers, pp, vpp))


def rule_sentence(name: str) -> str | None:
    """What the plan rule or framework rule ``name`` requires (None for a name no table knows)."""
    if name in PLAN_RULES:
        return PLAN_RULES[name]
    for framework in FRAMEWORKS:
        sentence = framework_rules(framework).get(name)
        if sentence:
            return sentence
    return None


def violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, allow_uneven: bool,
               framework: str | None = None, *, cp_comm_type: str = "p2p",
               rank_order: str = DEFAULT_RANK_ORDER) -> dict[str, np.ndarray]:
    """For each rule, a boolean array: True where the plan breaks it. With ``framework``, also that
    launcher's start-up rules (:func:`optimizer.emit.framework_violations`)."""
    broken = _plan_violations(model, training, plans, allow_uneven)
    if framework is not None:
        broken.update(framework_violations(framework, model, training, plans, cp_comm_type=cp_comm_type,
                                           rank_order=rank_order))
    return broken


def _plan_violations(model: ModelSpec, training: TrainingSpec, plans: PlanArrays,
                     allow_uneven: bool) -> dict[str, np.ndarray]:
    gb = training.global_batch_size
    batch_per_step = plans.dp * plans.micro_batch
    batch_ok = gb % batch_per_step == 0
    m = np.where(batch_ok, gb // batch_per_step, 0)
    interleaved = plans.schedule == INTERLEAVED
    schedule, v_shape = plans.schedule, is_v_shaped(plans.schedule)
    one_chunk = np.isin(schedule, (ONE_F_ONE_B, ZB_H2, DUALPIPE))
    local_seq = training.seq_length // plans.cp
    _, k, _ = layers_per_stage(model.num_layers, plans.pp)
    chunk = -(-k // plans.vpp)
    experts = max(model.num_experts, 1)
    return {
        "layers_split_over_stages_and_chunks": ~split_ok(model.num_layers, plans.pp, plans.vpp, allow_uneven),
        "global_batch_divisible_by_dp_micro_batch": ~batch_ok,
        "interleave_needs_pipeline": (plans.vpp > 1) & (plans.pp < 2),
        "interleave_microbatches_divisible_by_pp": interleaved & (m % plans.pp != 0),
        "schedule_chunks": ((one_chunk & (plans.vpp != 1)) | (interleaved & (plans.vpp < 2))
                            | (v_shape & (plans.vpp != 2)) | ((schedule != ONE_F_ONE_B) & (plans.pp < 2))),
        "v_schedule_split": v_shape & ((k % 2 != 0) | (plans.pp * k - model.num_layers > k)),
        "dualpipe_ranks_and_microbatches": (((schedule == DUALPIPE) & ((plans.pp % 2 != 0) | (m % 2 != 0)
                                                                        | (m < 2 * plans.pp)))
                                            | ((schedule == DUALPIPEV) & (m < 2 * plans.pp))),
        "sequence_parallel_needs_tp": plans.sequence_parallel & (plans.tp < 2),
        "moe_with_tp_needs_sequence_parallel": model.is_moe & (plans.tp > 1) & ~plans.sequence_parallel,
        "sequence_divisible_by_cp_tp": plans.sequence_parallel & ((training.seq_length % plans.cp != 0)
                                                                 | (local_seq % plans.tp != 0)),
        "zero_needs_data_parallel": (plans.zero_stage > 0) & (plans.dp * plans.cp < 2),
        "recompute_layers_within_chunk": (plans.recompute == FULL) & (plans.recompute_num_layers > chunk),
        "recompute_modules_exist": (plans.recompute == SELECTIVE)
                                   & ((plans.recompute_modules & ~available_modules(model)) != 0),
        "expert_degrees_valid": (experts % plans.ep != 0)
                                | ((plans.tp * plans.cp * plans.dp) % (plans.etp * plans.ep) != 0),
        "hybrid_sharding_divides": (plans.dp_replicate < 1) | (plans.dp % np.maximum(plans.dp_replicate, 1) != 0)
                                   | (plans.expert_data_parallel % np.maximum(plans.dp_replicate, 1) != 0),
        "hybrid_sharding_needs_zero": (plans.dp_replicate > 1) & ((plans.zero_stage < 1)
                                                                  | (plans.dp * plans.cp < 2 * plans.dp_replicate)),
        "activation_offload_valid": (plans.activation_offload_layers != 0)
                                    & ((plans.pp > 1) | (plans.recompute != NONE)
                                       | (plans.activation_offload_layers < 0)
                                       | (plans.activation_offload_layers >= model.num_layers)),
    }


def available_modules(model: ModelSpec) -> int:
    """Bitmask of the recompute modules that exist in the model."""
    present = {"core_attn": True, "layernorm": True, "mla_up_proj": model.is_mla,
               "mlp": model.num_dense_layers > 0, "moe_act": model.is_moe, "moe": model.is_moe,
               "shared_experts": model.is_moe and model.shared_expert_ffn_hidden_size > 0}
    return sum(MODULE_BIT[name] for name, yes in present.items() if yes)


SCHEDULE_RULES = ("layers_split_over_stages_and_chunks", "global_batch_divisible_by_dp_micro_batch",
                  "interleave_needs_pipeline", "interleave_microbatches_divisible_by_pp", "schedule_chunks",
                  "v_schedule_split", "dualpipe_ranks_and_microbatches")
"""The rules that involve only the layout and the schedule (virtual stages, micro-batch)."""


def valid_mask(model: ModelSpec, training: TrainingSpec, plans: PlanArrays, allow_uneven: bool,
               rules: tuple[str, ...] | None = None, framework: str | None = None, *, cp_comm_type: str = "p2p",
               rank_order: str = DEFAULT_RANK_ORDER) -> np.ndarray:
    """True where the plan obeys every rule (or every rule named in ``rules``), the framework's included."""
    broken = violations(model, training, plans, allow_uneven, None if rules is not None else framework,
                        cp_comm_type=cp_comm_type, rank_order=rank_order)
    ok = np.ones(len(plans), dtype=bool)
    for name, mask in broken.items():
        if rules is None or name in rules:
            ok &= ~mask
    return ok
