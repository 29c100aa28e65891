"""The plans the emitters are checked on: what users take from ``--emit``, and every knob at least once.

Two sources, as the launch issue measured them: the top 10 plans of 37 searches (dense, MoE and MLA
models; BF16 and every FP8 recipe; CP, EP, interleaved and uneven pipelines; each recompute mode;
ZeRO 0-3; offload; flex dispatchers; CUDA graphs; the EP overlap; Ulysses CP; the models torchtitan
ships a config for), each searched with the
framework's own rules active (what ``plan-search --emit FRAMEWORK`` shows), and hand-built plans that
reach the knobs a top 10 rarely shows. A hand-built plan the framework refuses is dropped by the same
rules, so every case is one the search could rank.

``conformance_cases(framework)`` is used by the CI tests (``tests/test_emit_*.py``, no framework
installed) and by the conformance tests (``tests/conformance/test_*.py``, run by ``.ci/conformance``
against the pinned frameworks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cost_model.model_loader import build_training, load_model
from cost_model.model_spec import ModelSpec
from cost_model.options import CostOptions
from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays, module_mask
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from hardware.placement import DEFAULT_RANK_ORDER
from optimizer.emit import Emission, LaunchKnobs, build_knobs, emit, framework_violations
from optimizer.plan_rules import violations
from optimizer.search import Scenario, search
from optimizer.search_options import SearchOptions


@dataclass(frozen=True)
class ConformanceCase:
    """One priced plan to emit and check."""

    name: str
    """Where it comes from: the search (and rank) or the hand-built knob it covers."""
    plan: dict[str, Any]
    """Plan columns (:class:`cost_model.plan.PlanArrays` names) with native ints and bools."""
    model: ModelSpec
    training: TrainingSpec
    cp_comm_type: str = "p2p"
    rank_order: str = DEFAULT_RANK_ORDER
    num_gpus: int = field(default=0)
    """GPUs of the plan (tp x pp x dp x cp)."""
    gpus_per_node: int = 8
    """GPUs per node of the cluster it was priced on (torchrun's processes per node)."""

    def knobs(self) -> LaunchKnobs:
        """The case resolved as the emitters see it."""
        return build_knobs(self.plan, self.model, self.training, cp_comm_type=self.cp_comm_type,
                           rank_order=self.rank_order, gpus_per_node=self.gpus_per_node)

    def emission(self, framework: str) -> Emission:
        """The case's launch for ``framework``."""
        return emit(framework, self.plan, self.model, self.training, cp_comm_type=self.cp_comm_type,
                    rank_order=self.rank_order, gpus_per_node=self.gpus_per_node)


@dataclass(frozen=True)
class _SearchCase:
    cluster: str
    model: str
    training: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    cp_comm_type: str = "p2p"


_SEARCHES: tuple[_SearchCase, ...] = (
    _SearchCase("h100x64", "llama3-8b", {"seq_length": 8192, "global_batch_size": 128}),
    _SearchCase("h100x64", "llama3-70b", {"seq_length": 8192, "global_batch_size": 256}),
    _SearchCase("h100x512", "llama3-405b", {"seq_length": 8192, "global_batch_size": 512}),
    _SearchCase("h100x1024", "llama3-405b", {"seq_length": 8192, "global_batch_size": 1024, "precision": "fp8"}),
    _SearchCase("h100x128", "llama3-70b", {"seq_length": 32768, "global_batch_size": 64}),
    _SearchCase("h100x128", "llama3-70b", {"seq_length": 65536, "global_batch_size": 32}, cp_comm_type="a2a"),
    _SearchCase("h100x16", "llama3-8b", {"seq_length": 4096, "global_batch_size": 256, "precision": "fp8",
                                         "fp8_recipe": "tensorwise"}),
    _SearchCase("b200x64", "llama3-70b", {"seq_length": 8192, "global_batch_size": 128, "precision": "fp8",
                                          "fp8_recipe": "mxfp8"}),
    _SearchCase("h100x32", "llama3-8b", {"seq_length": 8192, "global_batch_size": 64, "precision": "fp8",
                                         "fp8_recipe": "blockwise"}),
    _SearchCase("a100x64", "gpt3-175b", {"seq_length": 2048, "global_batch_size": 1536}),
    _SearchCase("h100x64", "qwen2.5-7b", {"seq_length": 4096, "global_batch_size": 512},
                {"zero_stages": (2, 3)}),
    _SearchCase("h100x8", "llama3-8b", {"seq_length": 4096, "global_batch_size": 64}, {"allow_offload": True}),
    _SearchCase("gb200x72", "llama3-70b", {"seq_length": 8192, "global_batch_size": 128, "precision": "fp8"},
                {"gpu_counts": (64,), "allow_offload": True}),
    _SearchCase("h100x64", "mixtral-8x7b", {"seq_length": 4096, "global_batch_size": 256}),
    _SearchCase("h100x64", "qwen3-30b-a3b", {"seq_length": 4096, "global_batch_size": 512}),
    _SearchCase("b200x64", "qwen3-30b-a3b", {"seq_length": 4096, "global_batch_size": 512, "precision": "fp8",
                                             "moe_token_dispatcher": "deepep"}),
    _SearchCase("b200x64", "qwen3-235b-a22b", {"seq_length": 4096, "global_batch_size": 1024, "precision": "fp8",
                                               "moe_token_dispatcher": "hybridep",
                                               "moe_rank_capacity_factor": 1.5}),
    _SearchCase("h100x128", "qwen3-235b-a22b", {"seq_length": 4096, "global_batch_size": 1024,
                                                "overlap_moe_expert_parallel_comm": True}),
    _SearchCase("h800x512", "deepseek-v3", {"seq_length": 4096, "global_batch_size": 2048}),
    _SearchCase("b200x256", "deepseek-v3", {"seq_length": 4096, "global_batch_size": 2048, "precision": "fp8",
                                            "fp8_recipe": "mxfp8"}),
    _SearchCase("h100x64", "gpt-oss-120b", {"seq_length": 4096, "global_batch_size": 512}),
    _SearchCase("b200x64", "qwen3-30b-a3b", {"seq_length": 4096, "global_batch_size": 512,
                                             "cuda_graph_scope": ("attn", "moe_router"), "moe_pad_to_capacity": True}),
    _SearchCase("h100x64", "llama3-8b", {"seq_length": 8192, "global_batch_size": 128,
                                         "cuda_graph_scope": ("full_iteration",)}),
    _SearchCase("h100x64", "llama3-70b", {"seq_length": 4096, "global_batch_size": 512, "grad_dtype": "bf16",
                                          "optimizer_moments_dtype": "bf16", "dropout": True}),
    _SearchCase("h100x128", "llama3-70b", {"seq_length": 8192, "global_batch_size": 256},
                {"recompute_modes": ("full",)}),
    # The models torchtitan 0.3.0 ships a config for, at the sizes people run them.
    _SearchCase("h100x8", "llama3-8b", {"seq_length": 8192, "global_batch_size": 32}),
    _SearchCase("h100x16", "llama3-8b", {"seq_length": 4096, "global_batch_size": 512}),
    _SearchCase("h100x128", "llama3-8b", {"seq_length": 8192, "global_batch_size": 1024}),
    _SearchCase("h100x64", "llama3-8b", {"seq_length": 16384, "global_batch_size": 64}),
    _SearchCase("a100x64", "llama3-8b", {"seq_length": 4096, "global_batch_size": 256}),
    _SearchCase("gb200x72", "llama3-8b", {"seq_length": 8192, "global_batch_size": 512}, {"gpu_counts": (64,)}),
    _SearchCase("b200x64", "llama3-8b", {"seq_length": 8192, "global_batch_size": 256, "precision": "fp8",
                                         "fp8_recipe": "mxfp8"}),
    _SearchCase("h200x64", "llama3-70b", {"seq_length": 8192, "global_batch_size": 256}),
    _SearchCase("h100x256", "llama3-70b", {"seq_length": 4096, "global_batch_size": 1024}),
    _SearchCase("h100x32", "qwen3-30b-a3b", {"seq_length": 4096, "global_batch_size": 256}),
    _SearchCase("h100x64", "qwen3-30b-a3b", {"seq_length": 8192, "global_batch_size": 128}),
    _SearchCase("h100x128", "gpt-oss-120b", {"seq_length": 4096, "global_batch_size": 1024}),
    # Megatron's embedding/loss-accounted split: Llama 3.1 405B's 126 layers + 2 = 16 stages x 8 chunks, the
    # first chunk the embedding alone, the last the loss alone (Megatron-Bridge's GB200 layout).
    _SearchCase("h100x1024", "llama3-405b", {"seq_length": 8192, "global_batch_size": 1536},
                {"tp_values": (8,), "pp_values": (16,), "vpp_values": (8,)}),
    _SearchCase("gb200x256", "llama3-405b", {"seq_length": 8192, "global_batch_size": 1536, "precision": "fp8"},
                {"tp_values": (4,), "pp_values": (16,), "vpp_values": (8,)}),
    # NVFP4 (Megatron-Bridge's Llama 3 70B on 64 GB200, GBS 256); torchtitan refuses FP4 by rule.
    _SearchCase("gb200x72", "llama3-70b", {"seq_length": 8192, "global_batch_size": 256, "precision": "fp4"},
                {"gpu_counts": (64,)}),
)

_TOP = 10


def _hand_built() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(name, model, training, plan) for knobs a top 10 rarely reaches."""
    dense = {"seq_length": 4096, "global_batch_size": 256}
    base = dict(tp=2, pp=1, dp=4, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute=NONE, recompute_num_layers=-1,
                recompute_modules=module_mask(["core_attn"]), sequence_parallel=True, zero_stage=1,
                optimizer_offload=False, activation_offload_layers=0)
    moe = dict(base, tp=1, dp=8, ep=8, sequence_parallel=False)
    return [
        ("selective core_attn+mlp", "llama3-8b", dense,
         dict(base, recompute=SELECTIVE, recompute_modules=module_mask(["core_attn", "mlp"]))),
        ("selective layernorm (bf16)", "llama3-8b", dense,
         dict(base, recompute=SELECTIVE, recompute_modules=module_mask(["layernorm"]))),
        ("full recompute 4 layers per chunk, interleaved", "llama3-70b", dense,
         dict(base, tp=4, pp=4, dp=2, vpp=2, recompute=FULL, recompute_num_layers=4)),
        ("full recompute every layer", "llama3-8b", dense, dict(base, recompute=FULL, recompute_num_layers=-1)),
        ("uneven pipeline (126 layers on 16 stages)", "llama3-405b", {"seq_length": 8192, "global_batch_size": 512},
         dict(base, tp=8, pp=16, dp=4, vpp=1, recompute=FULL)),
        ("embedding and loss accounted (405B: 126 + 2 layers on 16 stages x 8 chunks)", "llama3-405b",
         {"seq_length": 8192, "global_batch_size": 1536}, dict(base, tp=8, pp=16, dp=8, vpp=8)),
        ("embedding accounted (70B: 80 + 1 layers on 3 stages x 3 chunks)", "llama3-70b",
         {**dense, "global_batch_size": 384}, dict(base, tp=4, pp=3, dp=2, vpp=3)),
        ("uneven split as a layout (70B: 12 + 4 x 14 + 12, two chunks a stage)", "llama3-70b",
         {**dense, "global_batch_size": 384}, dict(base, tp=4, pp=6, dp=2, vpp=2)),
        ("ZeRO-2 (Megatron-FSDP optim_grads)", "llama3-8b", dense, dict(base, tp=1, dp=8, zero_stage=2,
                                                                         sequence_parallel=False)),
        ("ZeRO-3 (Megatron-FSDP optim_grads_params)", "llama3-8b", dense, dict(base, tp=1, dp=8, zero_stage=3,
                                                                                sequence_parallel=False)),
        ("DDP (ZeRO-0)", "llama3-8b", dense, dict(base, zero_stage=0)),
        ("optimizer offload", "llama3-8b", dense, dict(base, optimizer_offload=True)),
        ("activation offload of 16 layers", "llama3-8b", dense, dict(base, activation_offload_layers=16)),
        ("MoE selective moe_act (grouped GEMM)", "qwen3-30b-a3b", dense,
         dict(moe, recompute=SELECTIVE, recompute_modules=module_mask(["moe_act"]))),
        ("MoE selective moe", "qwen3-30b-a3b", dense, dict(moe, recompute=SELECTIVE, recompute_modules=module_mask(["moe"]))),
        ("EP all-to-all overlap", "qwen3-30b-a3b", {**dense, "overlap_moe_expert_parallel_comm": True}, moe),
        ("EP all-to-all overlap, interleaved", "qwen3-30b-a3b", {**dense, "overlap_moe_expert_parallel_comm": True},
         dict(moe, pp=2, dp=4, ep=4, vpp=2)),
        ("MLA selective mla_up_proj", "deepseek-v3", {"seq_length": 4096, "global_batch_size": 1024},
         dict(moe, tp=2, pp=8, dp=16, ep=32, etp=1, sequence_parallel=True, recompute=SELECTIVE,
              recompute_modules=module_mask(["mla_up_proj", "moe_act"]))),
        ("context parallel 4", "llama3-8b", {"seq_length": 32768, "global_batch_size": 64}, dict(base, cp=4, dp=1)),
        ("HSDP: distributed optimizer in 2 copies of 4 ranks", "llama3-8b", dense,
         dict(base, tp=1, dp=8, sequence_parallel=False, dp_replicate=2)),
        ("HSDP: Megatron-FSDP ZeRO-3 in 2 copies of 4 ranks", "llama3-8b", dense,
         dict(base, tp=1, dp=8, zero_stage=3, sequence_parallel=False, dp_replicate=2)),
        ("FP8 current scaling, FP8 weights, BF16 first and last layer", "llama3-8b",
         {**dense, "precision": "fp8", "fp8_recipe": "tensorwise", "num_layers_at_start_in_bf16": 1,
          "num_layers_at_end_in_bf16": 1}, base),
        ("MXFP8 weights gathered through the gradient buffer", "llama3-8b",
         {**dense, "precision": "fp8", "fp8_recipe": "mxfp8"}, base),
        ("NVFP4 with the last 4 layers in BF16 (Bridge's Llama 3 8B recipe)", "llama3-8b",
         {**dense, "precision": "fp4", "num_layers_at_end_in_bf16": 4}, base),
    ]


@lru_cache(maxsize=None)
def conformance_cases(framework: str = "megatron") -> tuple[ConformanceCase, ...]:
    """Every case for ``framework``: the searches' top plans, then the hand-built plans it accepts."""
    cases: list[ConformanceCase] = []
    seen: set[tuple] = set()
    for case in _SEARCHES:
        model = load_model(case.model).spec
        training = build_training(dict(case.training), model=model)
        options = SearchOptions(top_k=_TOP, framework=framework, **case.options)
        scenario = Scenario(model=model, training=training, cluster=load_cluster(case.cluster), options=options,
                            cost_options=CostOptions(cp_comm_type=case.cp_comm_type))
        result = search(scenario)
        if result.ranked is None:
            continue
        for rank, plan in enumerate((result.ranked.plans.record(i) for i in range(len(result.ranked))), start=1):
            key = (case.model, tuple(sorted(case.training.items())), case.cp_comm_type, tuple(sorted(plan.items())))
            if key in seen:
                continue
            seen.add(key)
            cases.append(ConformanceCase(
                name=f"{case.cluster} {case.model} {_describe(case)} #{rank}", plan=plan, model=model,
                training=training, cp_comm_type=case.cp_comm_type, rank_order=options.rank_order,
                num_gpus=plan["tp"] * plan["pp"] * plan["dp"] * plan["cp"],
                gpus_per_node=scenario.cluster.topology.gpus_per_node))
    for name, model_name, settings, plan in _hand_built():
        model = load_model(model_name).spec
        training = build_training(dict(settings), model=model)
        plans = PlanArrays.from_columns({k: [v] for k, v in plan.items()})
        refused = violations(model, training, plans, allow_uneven=True, framework=framework)
        if any(mask[0] for mask in refused.values()):
            continue
        cases.append(ConformanceCase(name=f"hand-built: {name}", plan=plan, model=model, training=training,
                                     num_gpus=plan["tp"] * plan["pp"] * plan["dp"] * plan["cp"]))
    return tuple(cases)


def _describe(case: _SearchCase) -> str:
    settings = {**case.training, **case.options, **({"cp_comm": "a2a"} if case.cp_comm_type == "a2a" else {})}
    return " ".join(f"{k}={v}" for k, v in settings.items())


__all__ = ["ConformanceCase", "conformance_cases", "framework_violations"]
