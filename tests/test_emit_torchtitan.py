"""The torchtitan launch without torchtitan installed: its words exist in torchtitan 0.3.0, it runs the
priced plan, and each rule refuses what torchtitan cannot run as priced.

The key list (``tests/conformance/data/torchtitan_0.3.0_keys.json``) is generated from the installed
framework by ``python -m tests.conformance.test_torchtitan --refresh``; the conformance test checks it
is current and loads every emitted launch with torchtitan itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cost_model.model_loader import build_training, load_model
from cost_model.plan import FULL, NONE, SELECTIVE, PlanArrays
from optimizer.emit import build_knobs, emit, framework_rules, framework_violations
from optimizer.emit import torchtitan as tt
from tests.conformance.plan_grid import conformance_cases

KEYS = json.loads((Path(__file__).parent / "conformance" / "data" / "torchtitan_0.3.0_keys.json").read_text())
BASE = dict(tp=1, pp=1, dp=8, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute=NONE, recompute_num_layers=-1,
            recompute_modules=1, sequence_parallel=False, zero_stage=3, optimizer_offload=False,
            activation_offload_layers=0)


def parse(argv: tuple[str, ...]) -> tuple[str, str, dict[str, str | bool], str]:
    """(module, config, {section.field: value}, activation subcommand) of an emitted command."""
    start = argv.index("torchtitan.train")
    assert list(argv[:2]) == ["torchrun", "--nproc-per-node"] and argv[start - 1] == "-m"
    words = list(argv[start + 1:])
    assert words[0] == "--module" and words[2] == "--config"
    module, config, rest = words[1], words[3], words[4:]
    subcommand = rest.pop()
    values: dict[str, str | bool] = {}
    i = 0
    while i < len(rest):
        name = rest[i][2:]
        section, _, field = name.partition(".")
        if field.startswith("no-"):
            values[f"{section}.{field[3:].replace('-', '_')}"] = False
            i += 1
        elif i + 1 == len(rest) or rest[i + 1].startswith("--"):
            values[name] = True
            i += 1
        else:
            values[name] = rest[i + 1]
            i += 2
    return module, config, values, subcommand


def case_emission(case):
    return case.emission("torchtitan")


@pytest.fixture(scope="module")
def grid():
    return conformance_cases("torchtitan")


def test_every_emitted_word_exists_in_torchtitan_0_3_0(grid):
    assert len(grid) >= 50
    for case in grid:
        module, config, values, subcommand = parse(case_emission(case).argv)
        assert config in KEYS["config_functions"][module], case.name
        assert subcommand in KEYS["activation_checkpoint"], case.name
        for name in values:
            section, _, field = name.partition(".")
            assert field in KEYS["sections"][section], (case.name, name)


def torchtitan_chunks(num_layers: int, pp: int, layers_per_stage: int, first_less: int, last_less: int) -> list[list[int]]:
    """Layers per (rank, virtual stage of that rank) as torchtitan 0.3.0 makes them (``_get_pipeline_metadata``,
    ``_generate_llm_fqn_per_model_part``; virtual stage i on rank i mod pp), written out independently."""
    effective = num_layers + first_less + last_less
    stages = -(-effective // layers_per_stage)
    per, extra = divmod(effective, stages)
    sizes = [per + (i < extra) for i in range(stages)]
    sizes[0] -= first_less
    sizes[-1] -= last_less
    return [sizes[r::pp] for r in range(pp)]


def torchtitan_split(num_layers: int, pp: int, layers_per_stage: int, first_less: int, last_less: int) -> list[int]:
    """Layers per pipeline rank: the sum of its virtual stages (:func:`torchtitan_chunks`)."""
    return [sum(chunks) for chunks in torchtitan_chunks(num_layers, pp, layers_per_stage, first_less, last_less)]


def test_the_launch_runs_the_priced_plan(grid):
    """Micro-batch, micro-batches per step, schedule and split, recompute, FSDP, precision, read back."""
    for case in grid:
        knobs = case.knobs()
        emission = case_emission(case)
        assert not any(d.startswith("cannot run") for d in emission.differences), case.name
        _, config, v, subcommand = parse(emission.argv)
        replicate = int(v["parallelism.data_parallel_replicate_degree"])
        shard = int(v["parallelism.data_parallel_shard_degree"])
        dp = replicate * shard
        assert (int(v["parallelism.tensor_parallel_degree"]), int(v["parallelism.pipeline_parallel_degree"]), dp,
                int(v["parallelism.context_parallel_degree"])) == (knobs.tp, knobs.pp, knobs.dp, knobs.cp)
        local, global_ = int(v["training.local_batch_size"]), int(v["training.global_batch_size"])
        accumulation = global_ // (local * dp)
        assert global_ == case.training.global_batch_size and int(v["training.seq_len"]) == case.training.seq_length
        if knobs.pp > 1:
            micro = int(v["parallelism.pipeline_parallel_microbatch_size"])
            assert (micro, local // micro * accumulation) == (knobs.micro_batch, knobs.num_microbatches)
            schedule = v["parallelism.pipeline_parallel_schedule"]
            assert schedule == tt.SCHEDULE_NAMES[knobs.schedule]
            split = torchtitan_split(case.model.num_layers, knobs.pp, int(v["parallelism.pipeline_parallel_layers_per_stage"]),
                                     int(v["parallelism.pipeline_parallel_first_stage_less_layers"]),
                                     int(v["parallelism.pipeline_parallel_last_stage_less_layers"]))
            assert tuple(split) == knobs.stage_layers, case.name
            chunks = torchtitan_chunks(case.model.num_layers, knobs.pp, *(int(v[f"parallelism.pipeline_parallel_{k}"]) for k in
                                       ("layers_per_stage", "first_stage_less_layers", "last_stage_less_layers")))
            assert [tuple(c) for c in chunks] == list(knobs.stage_chunks), case.name
        else:
            assert (local, accumulation) == (knobs.micro_batch, knobs.num_microbatches), case.name
        assert subcommand == ("activation_checkpoint:full" if knobs.recompute == "full" else "activation_checkpoint:none")
        assert (replicate, shard) == ((knobs.dp_replicate, knobs.dp // knobs.dp_replicate) if knobs.zero_stage >= 2
                                      else (knobs.dp, 1))
        assert v["parallelism.fsdp_reshard_after_forward"] == ("always" if knobs.zero_stage == 3 else "never")
        assert config.endswith("_mxfp8") == (case.training.precision == "fp8")
        assert v["training.disable_cuda_graphs"] == ("full_iteration" not in case.training.cuda_graph_scope)


def test_embedding_only_first_virtual_stage_is_the_priced_chunk_split():
    """Llama 3.1 405B at PP16 VP8: torchtitan's one-layer virtual stages with the first and the last one layer
    short (its default weighting of embedding and output as a layer each) are the priced chunks, 7 + 14 x 8 + 7;
    its split rule accepts them."""
    model = load_model("llama3-405b").spec
    training = build_training({"seq_length": 8192, "global_batch_size": 1536}, model=model)
    plan = dict(BASE, tp=8, pp=16, dp=8, vpp=8, zero_stage=0, sequence_parallel=True)
    knobs = build_knobs(plan, model, training)
    found = framework_violations("torchtitan", model, training, PlanArrays.from_columns({k: [x] for k, x in plan.items()}))
    assert not found["torchtitan_virtual_stages"][0] and not found["torchtitan_pipeline_microbatches"][0]
    _, _, v, _ = parse(emit("torchtitan", plan, model, training).argv)  # (torchtitan ships no 405B config)
    lps, first_less, last_less = (int(v[f"parallelism.pipeline_parallel_{k}"]) for k in
                                  ("layers_per_stage", "first_stage_less_layers", "last_stage_less_layers"))
    assert (lps, first_less, last_less) == (1, 1, 1)
    chunks = torchtitan_chunks(126, 16, lps, first_less, last_less)
    assert chunks[0] == [0] + [1] * 7 and chunks[-1] == [1] * 7 + [0]
    assert [tuple(c) for c in chunks] == list(knobs.stage_chunks)


def test_pipeline_and_fp8_launch_read_back():
    """Knobs the grid may miss: the uneven interleaved split and MXFP8."""
    model = load_model("llama3-70b").spec
    training = build_training({"seq_length": 4096, "global_batch_size": 96}, model=model)
    plan = dict(BASE, tp=8, pp=3, dp=2, vpp=3, zero_stage=0, sequence_parallel=True, recompute=FULL)
    emission = emit("torchtitan", plan, model, training)
    assert not any(d.startswith("cannot run") for d in emission.differences)
    _, config, v, subcommand = parse(emission.argv)
    assert config == "llama3_70b" and subcommand == "activation_checkpoint:full"
    assert v["parallelism.pipeline_parallel_layers_per_stage"] == "9"  # 27 layers per middle stage, 3 chunks
    assert (v["parallelism.pipeline_parallel_first_stage_less_layers"],
            v["parallelism.pipeline_parallel_last_stage_less_layers"]) == ("1", "0")  # 26 + 27 + 27 = 80
    assert torchtitan_split(80, 3, 9, 1, 0) == [26, 27, 27]
    assert (v["training.local_batch_size"], v["parallelism.pipeline_parallel_microbatch_size"]) == ("48", "1")
    model8 = load_model("llama3-8b").spec
    fp8 = build_training({"seq_length": 4096, "global_batch_size": 64, "precision": "fp8", "fp8_recipe": "mxfp8"},
                         model=model8)
    emission = emit("torchtitan", dict(BASE, tp=2, dp=4, sequence_parallel=True), model8, fp8)
    _, config, v, _ = parse(emission.argv)
    assert config == "llama3_8b_mxfp8" and v["compile.enable"] is True
    assert emission.text.startswith(f"# {tt.TESTED_VERSION}")
    assert any("torch.compile" in d for d in emission.differences)


def refused(model_name: str, settings: dict, plan: dict, cp_comm_type: str = "p2p") -> set[str]:
    model = load_model(model_name).spec
    training = build_training(dict({"seq_length": 4096, "global_batch_size": 64}, **settings), model=model)
    plans = PlanArrays.from_columns({k: [v] for k, v in plan.items()})
    found = framework_violations("torchtitan", model, training, plans, cp_comm_type=cp_comm_type)
    assert set(found) == set(framework_rules("torchtitan"))
    return {name for name, mask in found.items() if mask[0]}


MOE = dict(BASE, tp=2, dp=4, ep=8, sequence_parallel=True)
RULE_EXAMPLES = [
    # (rule, model, training settings, refused plan, accepted neighbour)
    ("torchtitan_model_config", "mixtral-8x7b", {}, dict(MOE), None),
    ("torchtitan_model_config", "llama3-8b", {"precision": "fp8", "fp8_recipe": "tensorwise"}, BASE, None),
    ("torchtitan_model_config", "llama3-405b", {}, dict(BASE, tp=8, pp=16, dp=1, zero_stage=0), None),
    ("torchtitan_zero1", "llama3-8b", {}, dict(BASE, zero_stage=1), dict(BASE, zero_stage=0, micro_batch=8)),
    ("torchtitan_zero2_microbatches", "llama3-8b", {}, dict(BASE, zero_stage=2),
     dict(BASE, zero_stage=2, micro_batch=8)),
    ("torchtitan_fsdp_with_pipeline", "llama3-8b", {}, dict(BASE, pp=2, dp=4), dict(BASE, pp=2, dp=4, zero_stage=0)),
    ("torchtitan_ddp_microbatches", "llama3-8b", {}, dict(BASE, zero_stage=0),
     dict(BASE, zero_stage=0, micro_batch=8)),
    ("torchtitan_ddp_with_cp", "llama3-8b", {}, dict(BASE, cp=2, dp=4, zero_stage=0), dict(BASE, cp=2, dp=4)),
    ("torchtitan_selective_recompute", "llama3-8b", {}, dict(BASE, recompute=SELECTIVE), dict(BASE, recompute=FULL)),
    ("torchtitan_partial_full_recompute", "llama3-8b", {}, dict(BASE, recompute=FULL, recompute_num_layers=4),
     dict(BASE, recompute=FULL, recompute_num_layers=32)),
    ("torchtitan_expert_tensor_parallel", "qwen3-30b-a3b", {}, dict(MOE, etp=2), MOE),
    ("torchtitan_expert_parallel_ranks", "qwen3-30b-a3b", {}, dict(MOE, zero_stage=0),
     dict(MOE, zero_stage=0, ep=2)),
    # 80 layers on 6 stages: 12 + 4 x 14 + 12; 14 layers do not make 4 chunks, and with 2 chunks torchtitan
    # would take both missing layers from the outer chunk (5 + 7), the priced split one from each (6 + 6)
    ("torchtitan_virtual_stages", "llama3-70b", {}, dict(BASE, tp=8, pp=6, dp=1, vpp=4, zero_stage=0),
     dict(BASE, tp=8, pp=6, dp=1, vpp=1, zero_stage=0)),
    ("torchtitan_virtual_stages", "llama3-70b", {}, dict(BASE, tp=8, pp=6, dp=1, vpp=2, zero_stage=0),
     dict(BASE, tp=8, pp=6, dp=1, vpp=1, zero_stage=0)),
    ("torchtitan_pipeline_microbatches", "llama3-8b", {"global_batch_size": 2}, dict(BASE, pp=4, dp=2, zero_stage=0),
     dict(BASE, pp=2, dp=1, zero_stage=0)),
    ("torchtitan_cp_a2a", "llama3-8b", {}, dict(BASE, cp=2, dp=4), None),
    # Qwen3-30B-A3B has 4 KV heads: Megatron replicates them over tp = 8, torchtitan refuses (conformance found it)
    ("torchtitan_tp_divides_heads", "qwen3-30b-a3b", {}, dict(BASE, tp=8, dp=1), dict(BASE, tp=4, dp=2)),
    ("torchtitan_tied_embeddings_pipeline", "gemma2-9b", {}, dict(BASE, pp=2, dp=4, zero_stage=0),
     dict(BASE, zero_stage=0)),
    ("torchtitan_cp_attention", "gpt-oss-120b", {}, dict(BASE, cp=2, dp=4), dict(BASE, dp=8)),
    ("torchtitan_sequence_divisible", "llama3-8b", {"seq_length": 4098}, dict(BASE, cp=2, dp=4),
     dict(BASE, dp=8)),
    ("torchtitan_global_batch", "llama3-8b", {"global_batch_size": 60}, dict(BASE, micro_batch=4),
     dict(BASE, micro_batch=1, dp=4, tp=2)),
    ("torchtitan_activation_offload", "llama3-8b", {}, dict(BASE, activation_offload_layers=4), BASE),
    ("torchtitan_optimizer_offload", "llama3-8b", {}, dict(BASE, optimizer_offload=True), BASE),
    ("torchtitan_moe_dispatcher", "qwen3-30b-a3b", {"moe_token_dispatcher": "deepep"}, MOE, None),
    ("torchtitan_moe_dispatcher", "qwen3-30b-a3b", {"moe_dispatch_fp8": True}, MOE, None),
    ("torchtitan_ep_overlap", "qwen3-30b-a3b", {"overlap_moe_expert_parallel_comm": True}, MOE,
     dict(MOE, recompute=FULL)),
    # torchtitan's DualPipeV runs F and B of a pair one after the other: no overlap to price
    ("torchtitan_ep_overlap", "qwen3-30b-a3b", {"overlap_moe_expert_parallel_comm": True},
     dict(MOE, dp=2, pp=2, vpp=2, schedule="dualpipev", zero_stage=0), dict(MOE, dp=2, pp=2, zero_stage=0)),
    ("torchtitan_pipeline_schedule", "llama3-8b", {}, dict(BASE, pp=2, dp=4, zero_stage=0, schedule="zb-h2"),
     dict(BASE, pp=2, dp=4, vpp=2, zero_stage=0, schedule="zbv")),
    ("torchtitan_pipeline_schedule", "llama3-8b", {}, dict(BASE, pp=2, dp=4, zero_stage=0, schedule="dualpipe"),
     dict(BASE, pp=2, dp=4, vpp=2, zero_stage=0, schedule="dualpipev")),
    ("torchtitan_zero_bubble_stages", "llama3-8b", {}, dict(BASE, pp=2, dp=4, zero_stage=0, schedule="zb-h1"),
     dict(BASE, pp=2, dp=4, vpp=2, zero_stage=0, schedule="zb-h1")),
    ("torchtitan_cuda_graphs", "llama3-8b", {"cuda_graph_scope": ("attn",)}, BASE, None),
    ("torchtitan_cuda_graphs", "llama3-8b", {"cuda_graph_scope": ("full_iteration",)},
     dict(BASE, pp=2, dp=4, zero_stage=0), dict(BASE, zero_stage=0)),
    ("torchtitan_dropout", "llama3-8b", {"dropout": True}, BASE, None),
    ("torchtitan_fp4", "llama3-8b", {"precision": "fp4"}, BASE, None),
    ("torchtitan_bf16_layers", "llama3-8b", {"precision": "fp8", "fp8_recipe": "tensorwise",
                                             "num_layers_at_end_in_bf16": 1}, BASE, None),
    ("torchtitan_grad_dtype", "llama3-8b", {"grad_dtype": "bf16"}, BASE, None),
    ("torchtitan_optimizer_state", "llama3-8b", {"optimizer_moments_dtype": "bf16"}, BASE, None),
    ("torchtitan_attention", "llama3-8b", {"flash_attention": False}, BASE, None),
    ("torchtitan_attention", "llama3-8b", {"flash_attention_2": False}, BASE, None),
]


@pytest.mark.parametrize("rule,model_name,settings,bad,good", RULE_EXAMPLES, ids=[r[0] for r in RULE_EXAMPLES])
def test_each_rule_refuses_what_torchtitan_cannot_run(rule, model_name, settings, bad, good):
    cp_comm = "a2a" if rule == "torchtitan_cp_a2a" else "p2p"
    assert rule in refused(model_name, settings, bad, cp_comm)
    if good is not None:
        assert rule not in refused(model_name, settings, good, cp_comm)


def test_every_rule_has_an_example_and_a_sentence():
    assert {r[0] for r in RULE_EXAMPLES} == set(tt.RULES)
    assert all(name.startswith("torchtitan_") and sentence for name, sentence in tt.RULES.items())


def test_a_refused_plan_says_so_in_its_differences():
    """An evaluated plan is not filtered by the search: the launch names the rules it breaks."""
    model = load_model("llama3-8b").spec
    training = build_training({"seq_length": 4096, "global_batch_size": 64}, model=model)
    emission = emit("torchtitan", dict(BASE, zero_stage=1, recompute=SELECTIVE), model, training)
    stated = [d for d in emission.differences if d.startswith("cannot run as priced: ")]
    assert sorted(stated) == sorted(f"cannot run as priced: {tt.RULES[name]}"
                                    for name in ("torchtitan_zero1", "torchtitan_selective_recompute"))
    clean = emit("torchtitan", BASE, model, training)
    assert not any(d.startswith("cannot run") for d in clean.differences)


def test_a_plain_plan_passes_every_rule():
    assert refused("llama3-8b", {}, BASE) == set()
    assert refused("qwen3-30b-a3b", {}, MOE) == set()


def test_rules_are_vectorised_over_plans():
    model = load_model("llama3-8b").spec
    training = build_training({"seq_length": 4096, "global_batch_size": 64}, model=model)
    plans = PlanArrays.from_columns({"tp": [1, 1, 1], "dp": [8, 8, 8], "zero_stage": [0, 1, 3]})
    found = tt.violations(model, training, plans)
    assert all(mask.shape == (3,) and mask.dtype == bool for mask in found.values())
    assert found["torchtitan_zero1"].tolist() == [False, True, False]
    assert not np.any(found["torchtitan_zero2_microbatches"])
