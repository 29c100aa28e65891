"""The Megatron-LM emitter without Megatron installed: flags exist, the command is the priced plan, rules bite.

* Every option the emitter writes is an option of Megatron-LM core_v0.16.1's parser, with the right arity
  and an accepted choice: ``tests/conformance/data/megatron_lm_flags.txt``, generated from the parser by
  ``python -m tests.conformance.test_megatron_lm --refresh``.
* Parsing the emitted command back gives the priced degrees, batch, split, recompute and precision.
* Each rule of :data:`optimizer.emit.megatron_lm.RULES` flags a plan that breaks it (:data:`RULE_BREAKERS`,
  which the conformance test also runs through Megatron to show Megatron refuses it) and no rule flags
  the same plan mended.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from cost_model.model_loader import build_training, load_model
from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays, module_mask
from cost_model.training_spec import TrainingSpec
from optimizer.emit import build_knobs, emit
from optimizer.emit import megatron_lm
from optimizer.emit.megatron_lm import RULES, violations
from optimizer.plan_rules import violations as plan_violations

FLAGS_FILE = Path(__file__).parent / "conformance" / "data" / "megatron_lm_flags.txt"


@lru_cache(maxsize=None)
def options() -> dict[str, tuple[str, tuple[str, ...]]]:
    """flag -> (kind, choices) of Megatron-LM's parser (the checked-in list)."""
    table = {}
    for line in FLAGS_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        flag, kind, choices = (line.split("\t") + [""])[:3]
        table[flag] = (kind, tuple(choices.split()))
    return table


def parse_flags(argv: tuple[str, ...]) -> dict[str, list[str]]:
    """``pretrain_gpt.py``'s flags of an emitted argv: flag -> its values."""
    words = list(argv[argv.index(megatron_lm.SCRIPT) + 1:])
    parsed: dict[str, list[str]] = {}
    flag = None
    for word in words:
        if word.startswith("--"):
            assert word not in parsed, f"{word} written twice"
            flag = word
            parsed[flag] = []
        else:
            assert flag is not None, f"value {word!r} before any flag"
            parsed[flag].append(word)
    return parsed


def layout_split(layout: str, pp: int) -> list[list[int]]:
    """Decoder layers per (pipeline rank, virtual chunk) of a ``--pipeline-model-parallel-layout``, by
    Megatron-Core's grammar (``PipelineParallelLayerLayout.parse_str_to_list``)."""
    text = layout.replace(",", "")
    text = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    text = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), text)
    stages = text.split("|")
    assert len(stages) % pp == 0
    vpp = len(stages) // pp
    return [[stages[v * pp + r].count("t") for v in range(vpp)] for r in range(pp)]


def accounted_split(num_layers: int, pp: int, vpp: int, embedding: bool, loss: bool) -> list[list[int]]:
    """Decoder layers per (pipeline rank, virtual chunk) without a layout, written out from Megatron-Core
    0.16.1 ``get_num_layers_to_build``: (L + embedding + loss) / pp a rank (divisible, or
    ``validate_args`` refuses), / vpp a chunk, one fewer in the first rank's first chunk (embedding
    accounted) and the last rank's last chunk (loss accounted)."""
    units = num_layers + embedding + loss
    assert units % pp == 0 and (units // pp) % vpp == 0
    per_chunk = units // pp // vpp
    return [[per_chunk - (embedding and (r, v) == (0, 0)) - (loss and (r, v) == (pp - 1, vpp - 1))
             for v in range(vpp)] for r in range(pp)]


def check_against_parser(argv: tuple[str, ...]) -> None:
    table = options()
    for flag, values in parse_flags(argv).items():
        assert flag in table, f"{flag} is not a Megatron-LM core_v0.16.1 option"
        kind, choices = table[flag]
        if kind == "switch":
            assert values == [], f"{flag} takes no value, got {values}"
        elif kind == "value":
            assert len(values) == 1, f"{flag} takes one value, got {values}"
        else:
            assert values, f"{flag} takes values"
        if choices:
            # An enum option (core_v0.16.1 argument_utils._get_enum_kwargs) takes the member's name,
            # 'flash' for AttnBackend.flash, and lists the members as its choices.
            assert all(v in choices or any(c.endswith("." + v) for c in choices) for v in values), \
                f"{flag} {values} not among {choices}"


def check_is_priced_plan(case_plan: dict[str, Any], model, training, cp_comm_type="p2p", rank_order=None) -> None:
    extra = {"rank_order": rank_order} if rank_order else {}
    knobs = build_knobs(case_plan, model, training, cp_comm_type=cp_comm_type, **extra)
    emission = emit("megatron", case_plan, model, training, cp_comm_type=cp_comm_type, **extra)
    check_against_parser(emission.argv)
    flags = parse_flags(emission.argv)

    def one(flag: str, default: Any = None) -> Any:
        return flags[flag][0] if flag in flags else default

    assert int(one("--tensor-model-parallel-size")) == knobs.tp
    assert int(one("--pipeline-model-parallel-size")) == knobs.pp
    assert int(one("--context-parallel-size")) == knobs.cp
    nproc, nnodes = (int(emission.argv[emission.argv.index(k) + 1]) for k in ("--nproc-per-node", "--nnodes"))
    assert nproc * nnodes == knobs.world_size == knobs.tp * knobs.pp * knobs.cp * knobs.dp
    assert int(one("--micro-batch-size")) == knobs.micro_batch
    assert int(one("--global-batch-size")) == training.global_batch_size
    assert int(one("--seq-length")) == training.seq_length
    if "--pipeline-model-parallel-layout" in flags:
        split = layout_split(one("--pipeline-model-parallel-layout"), knobs.pp)
        assert {len(chunks) for chunks in split} == {knobs.vpp}
    else:
        vpp = int(one("--num-virtual-stages-per-pipeline-rank", 1))
        assert vpp == knobs.vpp
        split = accounted_split(model.num_layers, knobs.pp, vpp, "--account-for-embedding-in-pipeline-split" in flags,
                                "--account-for-loss-in-pipeline-split" in flags)
    assert [sum(chunks) for chunks in split] == list(knobs.stage_layers)
    assert split == [list(chunks) for chunks in knobs.stage_chunks]
    assert sum(map(sum, split)) == model.num_layers
    assert one("--recompute-granularity", "none") == knobs.recompute
    if knobs.recompute == "selective":
        assert tuple(flags["--recompute-modules"]) == knobs.recompute_modules
    if knobs.recompute == "full":
        assert one("--recompute-method") == "block"
        assert int(one("--recompute-num-layers")) == knobs.recompute_layers_per_chunk
    assert ("--use-distributed-optimizer" in flags) == (knobs.zero_stage >= 1)
    assert ("--use-megatron-fsdp" in flags) == (knobs.zero_stage >= 2)
    assert int(one("--cpu-offloading-num-layers", 0)) == knobs.activation_offload_layers
    assert ("--optimizer-cpu-offload" in flags) == knobs.optimizer_offload
    assert ("--bf16" in flags) == (training.precision != "fp16")
    assert one("--fp8-recipe") == (training.fp8_recipe if training.precision == "fp8" else None)
    assert (one("--fp4-format"), one("--fp4-recipe")) == (("e2m1", training.fp4_recipe) if training.precision == "fp4"
                                                          else (None, None))
    assert "--fp4-param-gather" not in flags  # priced with BF16 weights
    assert ("--grad-reduce-in-bf16" in flags) == (training.grad_dtype == "bf16")
    assert ("--hidden-dropout" in flags) == (not training.dropout)
    assert one("--attention-backend") == ("flash" if training.flash_attention_2 else None)
    assert ("--sequence-parallel" in flags) == knobs.sequence_parallel
    if model.is_moe:
        assert "--moe-grouped-gemm" in flags
        assert one("--moe-token-dispatcher-type") == ("alltoall" if training.moe_token_dispatcher == "alltoall"
                                                      else "flex")
        assert (int(one("--expert-model-parallel-size")), int(one("--expert-tensor-parallel-size"))) == (
            knobs.ep, knobs.etp)
    assert ("--overlap-moe-expert-parallel-comm" in flags) == knobs.ep_overlap
    assert one("--cp-comm-type", "p2p") == (cp_comm_type if knobs.cp > 1 else "p2p")
    assert int(one("--num-layers")) == model.num_layers and int(one("--hidden-size")) == model.hidden_size
    assert int(one("--vocab-size")) + 1 == model.vocab_size  # NullTokenizer adds the end-of-document token


# --- hand-built plans -------------------------------------------------------------------------------

DENSE = dict(tp=2, pp=1, dp=4, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute=NONE, recompute_num_layers=-1,
             recompute_modules=module_mask(["core_attn"]), sequence_parallel=True, zero_stage=1,
             optimizer_offload=False, activation_offload_layers=0)
MOE = dict(DENSE, tp=1, dp=8, ep=8, sequence_parallel=False)
SHORT = {"seq_length": 4096, "global_batch_size": 256}


def _model(name: str, **changes: Any):
    model = load_model(name).spec
    return dataclasses.replace(model, **changes) if changes else model


def _breaker(model_name: str, training: dict[str, Any], plan: dict[str, Any], model_changes=None, **options):
    model = _model(model_name, **(model_changes or {}))
    return (model_name, model, build_training(dict(training), model=model), plan, options)


RULE_BREAKERS: dict[str, tuple] = {
    "megatron_pipeline_schedule": _breaker("llama3-8b", SHORT, dict(DENSE, pp=2, dp=2, schedule="zb-h1")),
    "megatron_rank_order": _breaker("llama3-8b", SHORT, DENSE, rank_order="tp-dp-cp-ep-pp"),
    "megatron_tp_pp_dp_mapping_expert_dp": _breaker("qwen3-30b-a3b", SHORT, dict(MOE, pp=2, ep=4),
                                                    rank_order="tp-cp-ep-pp-dp"),
    "megatron_cp_a2a_heads_divisible": _breaker("llama3-8b", {"seq_length": 32768, "global_batch_size": 64},
                                                dict(DENSE, cp=8, dp=1), cp_comm_type="a2a"),
    "megatron_seq_divisible_by_2cp": _breaker("llama3-8b", {"seq_length": 4100, "global_batch_size": 64},
                                              dict(DENSE, tp=1, cp=4, dp=2, sequence_parallel=False)),
    "megatron_fp8_delayed_no_norm_or_moe_act_recompute": _breaker("llama3-8b", dict(SHORT, precision="fp8", fp8_recipe="delayed"),
                                                       dict(DENSE, recompute=SELECTIVE,
                                                            recompute_modules=module_mask(["layernorm"]))),
    "megatron_cuda_graphs_full_recompute_needs_full_iteration": _breaker("llama3-8b", dict(SHORT, cuda_graph_scope=("attn",)),
                                                    dict(DENSE, recompute=FULL)),
    "megatron_cuda_graphs_moe_recompute_router": _breaker("qwen3-30b-a3b",
                                                          dict(SHORT, cuda_graph_scope=("attn", "moe_router")),
                                                          dict(MOE, recompute=SELECTIVE,
                                                               recompute_modules=module_mask(["moe"]))),
    "megatron_cuda_graphs_no_activation_offload": _breaker("llama3-8b", dict(SHORT, cuda_graph_scope=("attn",)),
                                                        dict(DENSE, activation_offload_layers=8)),
    "megatron_cuda_graphs_dropout_recompute": _breaker("llama3-8b", dict(SHORT, cuda_graph_scope=("attn",), dropout=True),
                                                       dict(DENSE, recompute=SELECTIVE)),
    "megatron_cuda_graph_scope_valid": _breaker("llama3-8b", dict(SHORT, cuda_graph_scope=("moe_router",)), DENSE),
    "megatron_ep_overlap_moe_recompute": _breaker("qwen3-30b-a3b", dict(SHORT, overlap_moe_expert_parallel_comm=True),
                                                  dict(MOE, recompute=SELECTIVE, recompute_modules=module_mask(["moe"]))),
    "megatron_ep_overlap_cuda_graphs": _breaker("qwen3-30b-a3b", dict(SHORT, overlap_moe_expert_parallel_comm=True,
                                                                      cuda_graph_scope=("full_iteration",),
                                                                      moe_pad_to_capacity=True), MOE),
    "megatron_ep_overlap_mtp": _breaker("deepseek-v3", dict(SHORT, global_batch_size=1024,
                                                            overlap_moe_expert_parallel_comm=True),
                                        dict(MOE, dp=64, ep=64)),
    "megatron_precision_aware_optimizer": _breaker("llama3-8b", SHORT, dict(DENSE, zero_stage=0, optimizer_offload=True)),
    "megatron_tp_comm_overlap_needs_sequence_parallel": _breaker("llama3-8b", dict(SHORT, tp_comm_overlap=True),
                                                                 dict(DENSE, sequence_parallel=False)),
    "megatron_param_gather_overlap_needs_grad_overlap": _breaker("llama3-8b", dict(SHORT, overlap_grad_reduce=False),
                                                                 DENSE),
    "megatron_flex_dispatcher_needs_tp_ep": _breaker("qwen3-30b-a3b", dict(SHORT, moe_token_dispatcher="deepep"),
                                                     dict(MOE, ep=1)),
    "megatron_deepep_no_pad_to_capacity": _breaker("qwen3-30b-a3b", dict(SHORT, moe_token_dispatcher="deepep",
                                                                         moe_pad_to_capacity=True), MOE),
    "megatron_no_rank_capacity": _breaker("qwen3-30b-a3b", dict(SHORT, moe_token_dispatcher="hybridep",
                                                                moe_rank_capacity_factor=1.5), MOE),
    "megatron_no_fp8_dispatch": _breaker("qwen3-30b-a3b", dict(SHORT, moe_dispatch_fp8=True), MOE),
    "megatron_moe_bias_needs_etp1": _breaker("gpt-oss-120b", SHORT, dict(MOE, tp=2, etp=2, ep=4, dp=4,
                                                                          sequence_parallel=True)),
    "megatron_no_alibi": _breaker("llama3-8b", SHORT, DENSE, model_changes={"position_embedding_type": "alibi"}),
    "megatron_bf16_layers_within_stage": _breaker("llama3-8b", dict(SHORT, precision="fp8", fp8_recipe="tensorwise",
                                                                   num_layers_at_start_in_bf16=9), dict(DENSE, pp=4, dp=1, zero_stage=0)),
    "megatron_fsdp_hsdp_dense_only": _breaker("qwen3-30b-a3b", SHORT, dict(MOE, ep=4, zero_stage=3, dp_replicate=2)),
    "megatron_learned_positions_cover_sequence": _breaker("gpt3-175b", SHORT, dict(DENSE, tp=8, dp=2)),
}
"""rule -> (model preset, model, training, plan, cost options): a plan that breaks the rule."""

MENDED: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "megatron_pipeline_schedule": ({}, {"schedule": "1f1b"}, {}),
    "megatron_rank_order": ({}, {}, {"rank_order": "tp-cp-ep-pp-dp"}),
    "megatron_tp_pp_dp_mapping_expert_dp": ({}, {"ep": 1}, {}),
    "megatron_cp_a2a_heads_divisible": ({}, {"cp": 4, "dp": 2}, {}),
    "megatron_seq_divisible_by_2cp": ({"seq_length": 4096}, {}, {}),
    "megatron_fp8_delayed_no_norm_or_moe_act_recompute": ({"fp8_recipe": "tensorwise"}, {}, {}),
    "megatron_cuda_graphs_full_recompute_needs_full_iteration": ({"cuda_graph_scope": ("full_iteration",)}, {}, {}),
    "megatron_cuda_graphs_moe_recompute_router": ({}, {"recompute_modules": module_mask(["moe_act"])}, {}),
    "megatron_cuda_graphs_no_activation_offload": ({"cuda_graph_scope": ()}, {}, {}),
    "megatron_cuda_graphs_dropout_recompute": ({"dropout": False}, {}, {}),
    "megatron_cuda_graph_scope_valid": ({"cuda_graph_scope": ("attn",)}, {}, {}),
    "megatron_ep_overlap_moe_recompute": ({}, {"recompute_modules": module_mask(["moe_act"])}, {}),
    "megatron_ep_overlap_cuda_graphs": ({"cuda_graph_scope": ("attn",)}, {}, {}),
    "megatron_ep_overlap_mtp": ({}, {"pp": 2, "vpp": 2, "dp": 32, "ep": 32}, {}),
    "megatron_precision_aware_optimizer": ({}, {"zero_stage": 1}, {}),
    "megatron_tp_comm_overlap_needs_sequence_parallel": ({}, {"sequence_parallel": True}, {}),
    "megatron_param_gather_overlap_needs_grad_overlap": ({"overlap_grad_reduce": True}, {}, {}),
    "megatron_flex_dispatcher_needs_tp_ep": ({}, {"ep": 8}, {}),
    "megatron_deepep_no_pad_to_capacity": ({"moe_token_dispatcher": "hybridep"}, {}, {}),
    "megatron_no_rank_capacity": ({"moe_rank_capacity_factor": None}, {}, {}),
    "megatron_no_fp8_dispatch": ({"moe_dispatch_fp8": False}, {}, {}),
    "megatron_moe_bias_needs_etp1": ({}, {"etp": 1, "ep": 8}, {}),
    "megatron_no_alibi": ({}, {}, {}),
    "megatron_fsdp_hsdp_dense_only": ({}, {"zero_stage": 1}, {}),
    "megatron_bf16_layers_within_stage": ({"num_layers_at_start_in_bf16": 8}, {}, {}),
    "megatron_learned_positions_cover_sequence": ({"seq_length": 2048}, {}, {}),
}
"""rule -> (training changes, plan changes, option changes) that mend its breaker."""


def _flags(rule: str, model, training, plan, opts) -> dict[str, bool]:
    plans = PlanArrays.from_records([plan])
    return {name: bool(mask[0]) for name, mask in violations(model, training, plans, **opts).items()}


def test_every_rule_has_a_breaker_and_a_sentence():
    assert set(RULE_BREAKERS) == set(RULES) == set(MENDED)
    assert all(name.startswith("megatron_") and sentence for name, sentence in RULES.items())


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_refuses_its_breaker_alone(rule):
    _, model, training, plan, opts = RULE_BREAKERS[rule]
    flagged = _flags(rule, model, training, plan, opts)
    assert flagged[rule]
    assert [name for name, on in flagged.items() if on] == [rule], "the breaker breaks another rule too"
    generic = plan_violations(model, training, PlanArrays.from_records([plan]), allow_uneven=True)
    assert not [name for name, mask in generic.items() if mask[0]], "the breaker breaks a generic plan rule"
    # A direct emit of a refused plan says so.
    knobs = build_knobs(plan, model, training, **opts)
    assert any(RULES[rule] in d for d in megatron_lm.emit(knobs).differences)


@pytest.mark.parametrize("rule", sorted(set(RULES) - {"megatron_no_alibi"}))
def test_rule_accepts_the_mended_plan(rule):
    _, model, training, plan, opts = RULE_BREAKERS[rule]
    training_changes, plan_changes, option_changes = MENDED[rule]
    training = training.with_changes(**training_changes)
    flagged = _flags(rule, model, training, dict(plan, **plan_changes), dict(opts, **option_changes))
    assert not flagged[rule]


def test_no_alibi_is_about_the_position_embedding():
    _, model, training, plan, opts = RULE_BREAKERS["megatron_no_alibi"]
    rope = dataclasses.replace(model, position_embedding_type="rope")
    assert not _flags("megatron_no_alibi", rope, training, plan, opts)["megatron_no_alibi"]


def test_rules_are_vectorised_over_plans():
    _, model, training, plan, opts = RULE_BREAKERS["megatron_cp_a2a_heads_divisible"]
    plans = PlanArrays.from_records([plan, dict(plan, cp=4, dp=2), dict(plan, cp=2, dp=4), dict(plan, tp=8, cp=2, dp=1)])
    refused = violations(model, training, plans, **opts)["megatron_cp_a2a_heads_divisible"]
    # 8 KV heads: per TP rank 4, 4, 4, 1 (tp 8 keeps one head each) against cp 8, 4, 2, 2.
    assert refused.tolist() == [True, False, False, True]
    assert all(len(mask) == len(plans) and mask.dtype == bool for mask in violations(model, training, plans).values())


# --- the command is the priced plan -----------------------------------------------------------------

HAND_BUILT = [
    ("llama3-405b", {"seq_length": 8192, "global_batch_size": 512}, dict(DENSE, tp=8, pp=16, dp=4, recompute=FULL)),
    ("llama3-70b", SHORT, dict(DENSE, tp=4, pp=4, dp=2, vpp=2, recompute=FULL, recompute_num_layers=4)),
    ("llama3-70b", dict(SHORT, global_batch_size=384), dict(DENSE, tp=4, pp=3, dp=2, vpp=3)),  # 80 = 26 + 27 + 27
    ("deepseek-v3", {"seq_length": 4096, "global_batch_size": 1024},
     dict(MOE, tp=2, pp=8, dp=16, ep=32, sequence_parallel=True, vpp=2, recompute=SELECTIVE,
          recompute_modules=module_mask(["mla_up_proj", "moe_act"]))),
    ("qwen3-30b-a3b", dict(SHORT, precision="fp8", fp8_recipe="mxfp8", moe_token_dispatcher="hybridep",
                           grad_dtype="bf16", optimizer_moments_dtype="bf16"), dict(MOE, zero_stage=3)),
    ("gpt3-175b", {"seq_length": 2048, "global_batch_size": 1536}, dict(DENSE, tp=8, pp=8, dp=2, vpp=3)),
    # dgxc-benchmarking's GPT-3 175B recipe: dropout 0.1 on TE's flash-attn 2 (NVTE_FUSED_ATTN=0)
    ("gpt3-175b", {"seq_length": 2048, "global_batch_size": 256, "dropout": True, "flash_attention_2": True},
     dict(DENSE, tp=4, pp=8, dp=4, vpp=12)),
    # Megatron-Bridge's NVFP4 Llama 3 70B on GB200 (mbridge-069): TP2 PP4 VP5
    ("llama3-70b", {"seq_length": 8192, "global_batch_size": 256, "precision": "fp4"}, dict(DENSE, tp=2, pp=4, dp=8, vpp=5)),
    ("llama3-70b", dict(SHORT, global_batch_size=512), dict(DENSE, tp=8, pp=2, dp=2, vpp=3)),  # 40 = 14 + 13 + 13
    ("llama3-8b", dict(SHORT, global_batch_size=64, overlap_moe_expert_parallel_comm=False),
     dict(DENSE, tp=2, pp=2, dp=2, cp=2, vpp=4, recompute=FULL, recompute_num_layers=2)),
    ("gpt-oss-120b", SHORT, dict(MOE, dp=8, ep=8)),
    ("llama3-8b", dict(SHORT, dropout=True, precision="fp16"), dict(DENSE, activation_offload_layers=16)),
    ("llama3-8b", dict(SHORT, cuda_graph_scope=("full_iteration",)), dict(DENSE, recompute=FULL)),
    ("llama3-405b", {"seq_length": 8192, "global_batch_size": 1536}, dict(DENSE, tp=8, pp=16, dp=8, vpp=8)),
    ("llama3-70b", dict(SHORT, global_batch_size=384), dict(DENSE, tp=4, pp=6, dp=2, vpp=2)),  # 12+4x14+12
]


@pytest.mark.parametrize("index", range(len(HAND_BUILT)))
def test_hand_built_commands_are_the_priced_plan(index):
    name, settings, plan = HAND_BUILT[index]
    model = load_model(name).spec
    training = build_training(dict(settings), model=model)
    plans = PlanArrays.from_records([plan])
    refused = plan_violations(model, training, plans, allow_uneven=True, framework="megatron")
    assert not [rule for rule, mask in refused.items() if mask[0]]
    check_is_priced_plan(plan, model, training)


def test_uneven_split_is_spelled_chunk_by_chunk():
    """A split Megatron's switches cannot say: 80 layers on 6 stages are 12 + 4 x 14 + 12, each end stage two
    short, one layer in each of its two chunks (the short chunks where the embedding and the loss sit)."""
    model = load_model("llama3-70b").spec
    plan = dict(DENSE, tp=4, pp=6, dp=2, vpp=2)
    emission = emit("megatron", plan, model, build_training(dict(SHORT, global_batch_size=384), model=model))
    flags = parse_flags(emission.argv)
    layout = flags["--pipeline-model-parallel-layout"][0]
    assert layout_split(layout, 6) == [[6, 6]] + [[7, 7]] * 4 + [[6, 6]]
    assert layout.startswith("Et*6|t*7|") and layout.endswith("|t*6L")
    assert not any(flag.startswith("--account-for") for flag in flags)


def test_accounted_split_says_the_embedding_and_loss_count_as_layers():
    """Llama 3.1 405B at PP16 VP8 (Megatron-Bridge's GB200 layout): 126 + 2 = 128 = 16 x 8 chunks of one
    layer, rank 0's first chunk the embedding alone and rank 15's last the loss alone: 7 + 14 x 8 + 7.
    80 layers at PP3 VP3 count the embedding only: 81 = 3 x 27, chunks of 9, rank 0's first 8."""
    model = load_model("llama3-405b").spec
    training = build_training({"seq_length": 8192, "global_batch_size": 1536}, model=model)
    plan = dict(DENSE, tp=8, pp=16, dp=8, vpp=8)
    knobs = build_knobs(plan, model, training)
    assert knobs.stage_layers == (7,) + (8,) * 14 + (7,)
    assert knobs.stage_chunks[0] == (0,) + (1,) * 7 and knobs.stage_chunks[-1] == (1,) * 7 + (0,)
    flags = parse_flags(emit("megatron", plan, model, training).argv)
    assert "--pipeline-model-parallel-layout" not in flags
    assert flags["--account-for-embedding-in-pipeline-split"] == flags["--account-for-loss-in-pipeline-split"] == []
    assert flags["--num-virtual-stages-per-pipeline-rank"] == ["8"]
    check_is_priced_plan(plan, model, training)
    model70 = load_model("llama3-70b").spec
    training70 = build_training(dict(SHORT, global_batch_size=384), model=model70)
    plan70 = dict(DENSE, tp=4, pp=3, dp=2, vpp=3)
    flags = parse_flags(emit("megatron", plan70, model70, training70).argv)
    assert "--account-for-embedding-in-pipeline-split" in flags and "--account-for-loss-in-pipeline-split" not in flags
    assert build_knobs(plan70, model70, training70).stage_chunks == ((8, 9, 9), (9, 9, 9), (9, 9, 9))
    check_is_priced_plan(plan70, model70, training70)


def test_environment_and_text():
    model = load_model("llama3-8b").spec
    training = build_training(dict(SHORT), model=model)
    tp2 = emit("megatron", DENSE, model, training)
    assert tp2.env == (("CUDA_DEVICE_MAX_CONNECTIONS", "1"),)
    assert tp2.text.splitlines()[0].startswith(f"# {megatron_lm.TESTED_VERSION}")
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=1" in tp2.text
    fsdp = emit("megatron", dict(DENSE, tp=2, zero_stage=3), model, training)
    assert fsdp.env == ()  # Megatron-FSDP refuses CUDA_DEVICE_MAX_CONNECTIONS=1
    assert emit("megatron", dict(DENSE, tp=1, dp=8, sequence_parallel=False), model, training).env == ()
    # The text is the argv, quoted for a shell.
    words = shlex.split(tp2.text.split("\n", 2)[2].replace("\\\n", " "))
    assert tuple(words) == tp2.argv
    big = emit("megatron", dict(DENSE, dp=32), model, build_training(dict(SHORT), model=model))
    assert big.argv[:5] == ("torchrun", "--nproc-per-node", "8", "--nnodes", "8")
    assert '--node-rank "$NODE_RANK"' in big.text


def test_moe_layer_pattern_and_mtp():
    model = load_model("deepseek-v3").spec
    training = build_training({"seq_length": 4096, "global_batch_size": 1024}, model=model)
    emission = emit("megatron", dict(MOE, dp=64, ep=64), model, training)
    flags = parse_flags(emission.argv)
    pattern = flags["--moe-layer-freq"][0]
    assert re.fullmatch(r"[\d\[\]\(\)\+\*,]+", pattern)  # what Megatron's _eval_pattern evaluates
    assert eval(pattern) == [int(x) for x in model.moe_layers]  # noqa: S307 (digits and brackets only)
    assert flags["--mtp-num-layers"] == ["1"] and any("multi-token" in d for d in emission.differences)


def _grid():
    from tests.conformance.plan_grid import conformance_cases
    return conformance_cases("megatron")


def test_grid_commands_are_the_priced_plan():
    cases = _grid()
    assert len(cases) >= 200
    for case in cases:
        check_is_priced_plan(case.plan, case.model, case.training, case.cp_comm_type, case.rank_order)


def test_gemma_architecture_the_gpt_layer_lacks_is_said():
    # Gemma 2: four norms per layer and a GeLU gate (hidden_activation gelu_pytorch_tanh); Megatron-Core's
    # GPT layer has two norms and --swiglu gates with SiLU. Llama 3 has neither difference.
    plan = dict(tp=1, pp=1, dp=8, micro_batch=1, zero_stage=1)
    training = TrainingSpec(seq_length=4096, global_batch_size=64)
    gemma = emit("megatron", plan, load_model("gemma2-9b").spec, training).differences
    assert len(gemma) == 2 and "4 norms per layer" in gemma[0] and "gelu_pytorch_tanh" in gemma[1]
    assert emit("megatron", plan, load_model("llama3-8b").spec, training).differences == ()
    bridge = emit("megatron-bridge", plan, load_model("gemma2-9b").spec, training).differences
    assert any("4 norms per layer" in line for line in bridge)
