"""training_runs.csv read as validator rows (cost_model/calibration/training_runs.py): each mapping table
gives the published settings, what cannot be priced is skipped with its reason, every converted row is
priced, and CSV rows that repeat a curated row are dropped."""

from __future__ import annotations

import csv

import pytest
import yaml

from cost_model.calibration.training_runs import (DEFAULT_CSV, ERRATA, GIB_BYTES, SkippedRow, join_rows, load_all_rows,
                                                  load_all_rows_report, load_training_runs, memory_gib, parse_seq_len)
from cost_model.calibration.validate import DEFAULT_DATASET, validate_row
from cost_model.stacks import STACK_NAMES


@pytest.fixture(scope="module")
def converted():
    rows, skipped = load_training_runs()
    return {row["id"]: row for row in rows}, {skip.id: skip for skip in skipped}


@pytest.fixture(scope="module")
def table():
    with open(DEFAULT_CSV, newline="", encoding="utf-8") as handle:
        return {row["run_id"]: row for row in csv.DictReader(handle)}


def test_every_csv_row_is_converted_or_skipped_once(converted, table):
    rows, skipped = converted
    assert len(table) == 556
    assert set(rows) | set(skipped) == set(table) and not set(rows) & set(skipped)
    assert all(isinstance(skip, SkippedRow) and skip.reason and skip.source_group for skip in skipped.values())
    assert all(row["source_group"] == table[key]["source_group"] for key, row in rows.items())


def test_megatron_bridge_row_takes_the_published_layout_precision_and_recipe(converted):
    # mbridge-096: 26.04.01 container, DGX-H100, Qwen3-235B-A22B FP8, 256 GPUs, TP2 PP8 CP1 VP4 EP32, MBS 1,
    # GBS 8192, FSDP 0, 1,712 tokens/s/GPU, 253 TFLOP/s/GPU.
    row = converted[0]["mbridge-096"]
    assert row["cluster"] == {"gpu": "h100-sxm", "num_gpus": 256}
    assert row["model"] == {"preset": "qwen3-235b-a22b"}
    assert {k: row["plan"][k] for k in ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch")} == \
        {"tp": 2, "pp": 8, "dp": 16, "cp": 1, "ep": 32, "vpp": 4, "micro_batch": 1}
    # No recompute and the EP all-to-all overlap: the release's recipe (set_qwen3_common_configs recompute None,
    # QWEN3_235B_A22B_PRETRAIN_CONFIG_H100_FP8_CS_V1 moe_a2a_overlap=True at v0.4.1), not the table.
    assert (row["plan"]["zero_stage"], row["plan"]["sequence_parallel"], row["plan"]["recompute"]) == (1, True, "none")
    training = row["training"]
    assert training["overlap_moe_expert_parallel_comm"] and "moe_token_dispatcher" not in training
    assert (training["precision"], training["fp8_recipe"], training["stack"]) == ("fp8", "tensorwise", "megatron-core")
    assert (training["seq_length"], training["global_batch_size"], training["grad_dtype"]) == (4096, 8192, "bf16")
    assert row["measured"]["tokens_per_s_per_gpu"] == 1712 and row["measured"]["tflops_per_gpu"] == 253


def test_megatron_bridge_deepseek_row_takes_mxfp8_and_the_recipes_recompute(converted):
    row = converted[0]["mbridge-001"]  # 26.08, GB300, DeepSeek-V3 MXFP8, TP1 PP2 VP8 EP32, FSDP not in the table
    assert row["cluster"]["gpu"] == "gb300-nvl72" and row["training"]["fp8_recipe"] == "mxfp8"
    assert (row["plan"]["recompute"], row["plan"]["recompute_modules"]) == ("selective", ["mla_up_proj"])
    assert row["plan"]["zero_stage"] is None  # not published: the validator tries every stage
    assert row["training"]["optimizer_moments_dtype"] == "bf16"


def test_llmfoundry_rows_take_micro_batch_sharding_and_gradient_dtype(converted, table):
    rows = converted[0]
    big = rows["llmfoundry-001"]  # MPT-70b, 512 H100, MBS 8, GA 1, FULL_SHARD DEFAULT, activation checkpointing
    assert (big["plan"]["micro_batch"], big["plan"]["dp"], big["training"]["global_batch_size"]) == (8, 512, 4096)
    assert (big["plan"]["zero_stage"], big["plan"]["recompute"], big["training"]["grad_dtype"]) == (3, "full", "fp32")
    assert big["training"]["stack"] == "composer-fsdp" and big["model"]["num_hidden_layers"] == 80
    grad_op = [key for key, row in table.items() if row["fsdp"].startswith("SHARD_GRAD_OP")]
    pure = [key for key, row in table.items() if "PURE" in row["fsdp"]]
    assert len(grad_op) == 6 and all(rows[key]["plan"]["zero_stage"] == 2 for key in grad_op)
    assert len(pure) == 80 and all(rows[key]["training"]["grad_dtype"] == "bf16" for key in pure)
    small = [key for key, row in table.items() if row["gpu_type"] == "A100 40GB"]
    assert all(rows[key]["cluster"]["overrides"] == {"gpu.memory_gib": 39.5, "gpu.hbm_GBps": 1555} for key in small)


def test_llmfoundry_recompute_agrees_with_the_published_hfu(converted, table):
    """HFU counts the recomputed forward: HFU/MFU = 4/3 exactly where the mapping says full recompute."""
    for key, row in converted[0].items():
        if row["source_group"] != "llmfoundry":
            continue
        ratio = float(table[key]["hfu_pct"]) / float(table[key]["mfu_pct"])
        assert ratio == pytest.approx(4 / 3 if row["plan"]["recompute"] == "full" else 1.0, abs=0.01), key


MLM_H100_SIZES_B = {"mlm_h100-001": 1.7, "mlm_h100-002": 7.1, "mlm_h100-003": 16, "mlm_h100-004": 32,
                    "mlm_h100-005": 70, "mlm_h100-006": 119, "mlm_h100-007": 177, "mlm_h100-008": 314,
                    "mlm_h100-009": 462, "mlm_h100-010": 177, "mlm_h100-011": 177}
"""The Megatron-LM README's model sizes (images/model_table.png and the strong-scaling plot, f2e5db402c)."""


def test_mlm_h100_models_count_the_readmes_parameters_with_an_output_layer_of_their_own(converted):
    # 177B: 96 x (12 x 12288^2 + 13 x 12288) = 173.96e9 in the layers, 131072 x 12288 = 1.611e9 per vocabulary
    # matrix, 4096 x 12288 = 0.050e9 positions, 2 x 12288 final norm: 177.23e9 with a separate output layer,
    # 175.62e9 tied (the README: "slightly more than 175 billion parameters due to larger vocabulary size").
    from cost_model.calibration.validate import prepare_row
    from cost_model.params import ParameterCounts

    rows = converted[0]
    for key, size in MLM_H100_SIZES_B.items():
        assert rows[key]["model"]["tie_word_embeddings"] is False
        total = ParameterCounts(prepare_row(rows[key], "test").model).total / 1e9
        assert abs(total - size) < 0.06 * size  # the table rounds (1.75 -> 1.7, 31.5 -> 32)
    assert ParameterCounts(prepare_row(rows["mlm_h100-007"], "test").model).total == pytest.approx(177.233e9, rel=1e-5)
    assert ParameterCounts(prepare_row(rows["mlm_h100-002"], "test").model).total == pytest.approx(7.1319e9, rel=1e-4)


def test_mlm_h100_strong_scaling_rows_run_the_readmes_overlap_flags(converted, table):
    # The README's overlap sentence covers both figures; the strong-scaling CSV rows carry no flags of their own.
    rows = converted[0]
    assert not table["mlm_h100-011"]["other_metrics"].strip()
    for key in ("mlm_h100-007", "mlm_h100-010", "mlm_h100-011"):
        row = rows[key]
        assert row["training"]["tp_comm_overlap"] is True
        assert (row["plan"]["zero_stage"], row["plan"]["sequence_parallel"]) == (1, True)
        assert (row["plan"]["tp"], row["plan"]["pp"]) == (8, 6)
    assert rows["mlm_h100-011"]["plan"]["dp"] == 96 and rows["mlm_h100-010"]["plan"]["dp"] == 2
    assert "README's section text" in rows["mlm_h100-011"]["notes"]
    assert rows["mlm_h100-001"]["training"]["tp_comm_overlap"] is False  # TP 1: nothing to overlap


def test_the_strong_scaling_series_leaves_one_micro_batch_size_under_the_interleaved_schedule(converted):
    # 1152 sequences, PP 6: at DP 64, 18 a rank (micro-batch 1 or 3 gives 18 or 6 micro-batches, divisible by
    # 6; 2 gives 9); at DP 96, 12 a rank (1 or 2 gives 12 or 6; 3 gives 4). Both: 1.
    from cost_model.calibration.training_runs import MLM_STRONG_SCALING_DP, interleaved_micro_batches

    assert interleaved_micro_batches(1152, 6, (64,)) == [1, 3]
    assert interleaved_micro_batches(1152, 6, (96,)) == [1, 2]
    assert interleaved_micro_batches(1152, 6, MLM_STRONG_SCALING_DP) == [1]
    assert interleaved_micro_batches(192 * 8, 8, (48,)) == [1, 2, 4]  # the weak-scaling 314B row: no constraint
    rows = converted[0]
    assert rows["mlm_h100-011"]["plan"]["micro_batch"] == 1 and rows["mlm_h100-010"]["plan"]["micro_batch"] == 1
    assert rows["mlm_h100-007"]["plan"]["micro_batch"] is None  # weak scaling: not published, not derived


def test_sc21_zero3_row_is_zero_stage_3_in_hardware_flops(converted):
    row = converted[0]["sc21_t2-001"]  # 174.6B, 384 A100, DeepSpeed ZeRO-3, MBS 4, 144 TFLOP/s
    assert (row["plan"]["tp"], row["plan"]["pp"], row["plan"]["dp"], row["plan"]["micro_batch"]) == (1, 1, 384, 4)
    assert row["plan"]["zero_stage"] == 3 and row["plan"]["recompute"] is None
    assert (row["measured"]["flops_counted"], row["measured"]["tflops_per_gpu"]) == ("hardware", 144)
    assert row["training"]["stack"] == "deepspeed-zero3" and row["training"]["precision"] == "fp16"
    ptdp = converted[0]["sc21_t2-010"]  # 529.6B PTD-P TP8 PP35 on 560 GPUs
    assert (ptdp["plan"]["recompute"], ptdp["training"]["stack"]) == ("full", "megatron-lm-2021")


def test_unpriceable_rows_are_skipped_with_their_reason(converted, table):
    rows, skipped = converted
    nvfp4 = [key for key, row in table.items() if row["precision"] == "NVFP4"]
    nemotron = [key for key in nvfp4 if table[key]["model"] == "Nemotron_3_Super"]
    assert len(nvfp4) == 33 and len(nemotron) == 15  # Nemotron 3 Super: no architecture columns
    assert all("missing architecture" in skipped[key].reason for key in nemotron)
    b200_long = [key for key, row in table.items() if row["source_group"] == "nemo_longseq" and "B200" in row["gpu_type"]]
    assert len(b200_long) == 8 and all("layout inconsistent" in skipped[key].reason for key in b200_long)
    assert "missing architecture" in skipped["mbridge-053"].reason  # Kimi K2: no architecture columns, no preset
    for key, row in rows.items():
        plan = row["plan"]
        assert plan["tp"] * plan["pp"] * plan["dp"] * plan["cp"] == row["cluster"]["num_gpus"], key


def test_nvfp4_rows_convert_to_the_bridge_recipe(converted, table):
    """The 18 Llama NVFP4 rows of the Megatron-Bridge tables run bf16_with_nvfp4_mixed: FP4 E2M1 GEMMs,
    NVFP4 recipe, on the GB200 / GB300 presets, with the table's own layout."""
    rows = converted[0]
    llama = [key for key, row in table.items() if row["precision"] == "NVFP4" and row["model"] != "Nemotron_3_Super"]
    assert len(llama) == 18 and all(key in rows for key in llama)
    for key in llama:
        assert (rows[key]["training"]["precision"], rows[key]["training"]["fp4_recipe"]) == ("fp4", "nvfp4"), key
        assert "fp8_recipe" not in rows[key]["training"], key
    row = rows["mbridge-035"]  # Llama 3.1 405B, 256 GB300, TP4 PP8 CP1 VP4, MBS 1, GBS 1536, 1413 tokens/s/GPU
    assert row["cluster"]["gpu"] == "gb300-nvl72"
    assert (row["plan"]["tp"], row["plan"]["pp"], row["plan"]["dp"], row["plan"]["vpp"]) == (4, 8, 8, 4)
    assert row["measured"]["tokens_per_s_per_gpu"] == 1413


def test_nvfp4_rows_run_tp_collectives_without_overlap(converted, table):
    """Megatron-Bridge's Llama performance configs turn the userbuffers TP overlap off for NVFP4
    (llama3_llm_pretrain.py / llama31_llm_pretrain.py, ``tp_comm_overlap = False if precision == "nvfp4"``)
    and keep it for the other precisions at TP > 1."""
    rows = converted[0]
    assert rows["mbridge-069"]["training"]["tp_comm_overlap"] is False   # 70B NVFP4 GB200 TP2
    assert rows["mbridge-035"]["training"]["tp_comm_overlap"] is False   # 405B NVFP4 GB300 TP4
    assert rows["mbridge-068"]["training"]["tp_comm_overlap"] is True    # 70B MXFP8 GB200 TP2, same layout
    assert rows["mbridge-033"]["training"]["tp_comm_overlap"] is True    # 405B FP8 GB300 TP4, same layout
    assert "tp_comm_overlap" not in rows["mbridge-066"]["training"]      # TP1: no TP collectives
    assert "tp_comm_overlap off" in rows["mbridge-069"]["notes"]


def test_gpt_oss_rows_take_the_recipes_recompute_per_gpu(converted):
    """Megatron-Bridge's GPT-OSS 120B configs (v0.2.0 to v0.6.0) recompute layernorm and moe_act on B200,
    GB200 and H100, and nothing on B300 and GB300 (CUDA graphs instead)."""
    rows = converted[0]
    b200, gb300 = rows["mbridge-085"]["plan"], rows["mbridge-082"]["plan"]
    assert (b200["recompute"], b200["recompute_modules"]) == ("selective", ["layernorm", "moe_act"])
    assert gb300["recompute"] == "none" and "recompute_modules" not in gb300


def test_errata_correct_the_published_layout_to_the_recipe(converted, table):
    """mbridge-155 (26.02.01 table, Llama 3 70B NVFP4 on 64 GB300): the table prints TP1 PP1 MBS 2 under
    DDP, which cannot hold 70B; the recipe of that release (LLAMA3_70B_PRETRAIN_CONFIG_GB300_NVFP4_V2) and the
    other containers' rows run TP1 PP4 VP5 MBS 1. The erratum is applied, cited in the notes, and the row
    then fits on the GPU."""
    rows = converted[0]
    row = rows["mbridge-155"]
    published = table["mbridge-155"]
    assert (published["tp"], published["pp"], published["micro_batch"]) == ("1", "1", "2")
    assert {k: row["plan"][k] for k in ("tp", "pp", "dp", "cp", "vpp", "micro_batch")} == \
        {"tp": 1, "pp": 4, "dp": 16, "cp": 1, "vpp": 5, "micro_batch": 1}
    assert row["plan"].get("activation_offload_layers") is None  # the TP1 PP1 offload knob no longer applies
    assert "ERRATUM" in row["notes"] and "LLAMA3_70B_PRETRAIN_CONFIG_GB300_NVFP4_V2" in row["notes"]
    assert "pp 1 -> 4" in row["notes"] and "tp 1 ->" not in row["notes"]  # only the changed fields are listed
    twin = rows["mbridge-066"]  # 26.04.01, same model, GPU, precision: the layout the recipe gives
    assert {k: row["plan"][k] for k in ("tp", "pp", "dp", "vpp", "micro_batch")} == \
        {k: twin["plan"][k] for k in ("tp", "pp", "dp", "vpp", "micro_batch")}
    assert validate_row(row, "training_runs.csv").fits
    assert rows["mbridge-166"]["plan"]["tp"] == 4 and rows["mbridge-166"]["plan"]["cp"] == 1  # FP8-CS V2 recipe
    assert rows["mbridge-163"]["plan"]["vpp"] == 8                                            # NVFP4 V2 = V1's VP8


def test_gpt_oss_25_11_b200_runs_the_release_recipes_ep_64(converted, table):
    """mbridge-243 (25.11 table, GPT-OSS 120B BF16 on 64 B200): the table prints EP 8, the release's recipe
    (v0.2.0-v0.2.2 GPT_OSS_120B_B200_BF16_BASE_CONFIG) sets EP 64; its 8213 tokens/s/GPU is the 26.02 EP 64
    row's 8047, not the 26.04 EP 8 rows' 13,045-13,568. Corrected, it is the curated row's run and drops out
    as its duplicate."""
    rows = converted[0]
    assert table["mbridge-243"]["ep"] == "8" and rows["mbridge-243"]["plan"]["ep"] == 64
    assert "ERRATUM" in rows["mbridge-243"]["notes"] and "GPT_OSS_120B_B200_BF16_BASE_CONFIG" in rows["mbridge-243"]["notes"]
    assert table["mbridge-085"]["ep"] == "8" and float(table["mbridge-085"]["tokens_per_s_per_gpu"]) == 13568
    _, _, report = load_all_rows_report()
    assert ("mbridge-243", "megatron-bridge-25.11-b200-gpt-oss-120b-bf16") in report.duplicates_dropped


def test_qwen3_30b_rows_run_the_release_recipes_dispatcher_and_graphs(converted, table):
    """Megatron-Bridge's Qwen3-30B-A3B configs per release tag: v0.3.1-v0.4.1 (26.02.01-26.04.01) HybridEP with
    Transformer Engine graphs of the router and preprocess ([attn, ...] on B200), HybridEP without graphs on
    H100; v0.5.0 (26.06) adds the sync-free full-iteration MXFP8 setup (rank capacity 1.5, paged stash 1.2)
    with the EP all-to-all overlap on Blackwell; v0.6.0 (26.08) the same without the overlap. No release
    recomputes."""
    rows = converted[0]
    gb300_2604 = rows["mbridge-133"]["training"]
    assert gb300_2604["moe_token_dispatcher"] == "hybridep"
    assert gb300_2604["cuda_graph_scope"] == ["moe_router", "moe_preprocess"]
    assert rows["mbridge-136"]["training"]["cuda_graph_scope"] == ["attn", "moe_router", "moe_preprocess"]  # B200
    h100 = rows["mbridge-137"]["training"]
    assert h100["moe_token_dispatcher"] == "hybridep" and "cuda_graph_scope" not in h100
    gb300_2606 = rows["mbridge-047"]["training"]
    assert (gb300_2606["cuda_graph_scope"], gb300_2606["moe_rank_capacity_factor"],
            gb300_2606["moe_paged_stash_factor"], gb300_2606["overlap_moe_expert_parallel_comm"]) == \
        (["full_iteration"], 1.5, 1.2, True)
    assert "overlap_moe_expert_parallel_comm" not in rows["mbridge-007"]["training"]  # 26.08 = v0.6.0
    assert all(rows[key]["plan"]["recompute"] == "none" for key in ("mbridge-047", "mbridge-133", "mbridge-137"))
    assert validate_row(rows["mbridge-047"], "training_runs.csv").fits  # MBS 8 on GB300 with the overlap


def test_qwen3_30b_26_02_01_h100_row_runs_the_release_recipes_pp1_ep16(converted, table):
    """mbridge-181 (26.02.01 table, H100): the table prints the 26.02 layout PP 2 VP 12 EP 8, the v0.3.1 recipe
    runs PP 1 EP 16 (QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_FP8_CS_V1), as the 26.04-26.06 rows print, and its
    9058 tokens/s/GPU is theirs (8826-8960), not the 26.02 row's 5113."""
    rows = converted[0]
    assert (table["mbridge-181"]["pp"], table["mbridge-181"]["ep"], table["mbridge-181"]["vpp"]) == ("2", "8", "12")
    assert {k: rows["mbridge-181"]["plan"][k] for k in ("pp", "dp", "ep", "vpp")} == {"pp": 1, "dp": 16, "ep": 16, "vpp": 1}
    assert {k: rows["mbridge-181"]["plan"][k] for k in ("pp", "dp", "ep", "vpp")} == \
        {k: rows["mbridge-137"]["plan"][k] for k in ("pp", "dp", "ep", "vpp")}
    assert "QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_FP8_CS_V1" in rows["mbridge-181"]["notes"]


def test_every_erratum_changes_a_published_cell_and_keeps_the_gpu_count(converted, table):
    rows = converted[0]
    for key, erratum in ERRATA.items():
        published = table[key]
        columns = {"tp": "tp", "pp": "pp", "dp": "dp", "cp": "cp", "ep": "ep", "vpp": "vpp", "micro_batch": "micro_batch"}
        assert any(published[columns[field]] != str(value) for field, value in erratum.plan.items()), key
        plan = rows[key]["plan"]
        assert plan["tp"] * plan["pp"] * plan["cp"] * plan["dp"] == int(published["num_gpus"]), key
        assert erratum.citation and "ERRATUM" in rows[key]["notes"], key


def test_torchtitan_rows_read_the_curated_pipeline_batches(converted):
    rows = converted[0]
    one_f_one_b, interleaved = rows["torchtitan-013"], rows["torchtitan-014"]  # local batch 32 on PP 8
    assert (one_f_one_b["plan"]["micro_batch"], one_f_one_b["plan"]["vpp"], one_f_one_b["plan"]["zero_stage"]) == (4, 1, 1)
    assert (interleaved["plan"]["micro_batch"], interleaved["plan"]["vpp"]) == (2, 2)
    assert one_f_one_b["training"]["tp_comm_overlap"] is True  # '+ AsyncTP' in the caption
    vanilla, async_tp = rows["torchtitan_asynctp-001"], rows["torchtitan_asynctp-002"]
    assert (vanilla["training"]["tp_comm_overlap"], async_tp["training"]["tp_comm_overlap"]) == (False, True)
    assert vanilla["plan"]["zero_stage"] == 3 and vanilla["training"]["global_batch_size"] == 16 * 32


def test_csv_rows_of_curated_runs_convert_to_the_curated_settings():
    """The twelve torchtitan rows the curated file also holds: the CSV reading gives the same layout,
    batch, precision and overlap as the hand-read curated rows."""
    rows, _, report = load_all_rows_report()
    curated = {row["id"]: row for row in rows}
    converted = {row["id"]: row for row in load_training_runs()[0]}
    assert len(report.memory_merged) == 12
    for csv_id, yaml_id in report.memory_merged:
        ours, theirs = converted[csv_id], curated[yaml_id]
        for key in ("tp", "pp", "dp", "cp", "vpp", "micro_batch", "recompute", "zero_stage", "sequence_parallel"):
            assert ours["plan"][key] == theirs["plan"][key], (csv_id, key)
        for key in ("seq_length", "global_batch_size", "precision", "fp8_recipe", "tp_comm_overlap", "stack"):
            assert ours["training"][key] == theirs["training"][key], (csv_id, key)


def test_every_converted_row_is_priced(converted):
    for key, row in converted[0].items():
        result = validate_row(row, "training_runs.csv")
        assert result.predicted_tokens_per_gpu > 0 and result.tflops_error is not None, key


def test_every_curated_row_names_its_source_group_and_stack():
    runs = yaml.safe_load(DEFAULT_DATASET.read_text())["runs"]
    assert all(run.get("source_group") for run in runs)
    assert all(run["training"].get("stack") in STACK_NAMES for run in runs)
    groups = {run["source_group"] for run in runs}
    assert {"mbridge", "torchtitan", "sc21_t1", "korthikanti2022"} <= groups


def _row(key, tokens, layout=(1, 1, 8), memory=None):
    tp, pp, dp = layout
    return {"id": key, "cluster": {"gpu": "h100-sxm", "num_gpus": tp * pp * dp},
            "training": {"precision": "fp8", "fp8_recipe": "tensorwise"},
            "plan": {"tp": tp, "pp": pp, "dp": dp, "cp": 1, "ep": 1, "vpp": 1},
            "measured": {"tokens_per_s_per_gpu": tokens, "memory_gib": memory}, "notes": ""}


def test_duplicates_within_one_percent_are_dropped_and_others_kept():
    curated = [_row("yaml-a", 10000.0), _row("yaml-b", None, layout=(2, 1, 4), memory=70.0)]
    csv_rows = [_row("same", 10090.0),                            # 0.9% apart: the same run
                _row("apart", 10150.0),                           # 1.5% apart: another measurement
                _row("layout", 10000.0, layout=(2, 1, 4)),        # another layout
                _row("merge", 5000.0, layout=(2, 1, 4), memory=70.3)]  # curated row has memory only
    rows, report = join_rows(curated, csv_rows)
    assert [row["id"] for row in rows] == ["yaml-a", "yaml-b", "apart", "layout", "merge"]
    assert report.duplicates_dropped == [("same", "yaml-a")] and report.memory_merged == [("merge", "yaml-b")]
    assert rows[-1]["measured"]["memory_gib"] is None and rows[-1]["measured"]["tokens_per_s_per_gpu"] == 5000.0


def test_load_all_rows_drops_the_csv_copies_of_curated_rows():
    with_csv, skipped = load_all_rows()
    curated, _ = load_all_rows(include_csv=False)
    ids = {row["id"] for row in with_csv}
    assert {row["id"] for row in curated} <= ids
    assert "mbridge-224" not in ids  # 25.11 GB300 Llama 3 8B: megatron-bridge-25.11-gb300-llama3-8b-fp8
    # 26.02 H100 Qwen3-30B: 5,113 in both since the curated row reads the publisher's corrected cell (c0b9a0003)
    assert "mbridge-218" not in ids
    assert "mbridge-250" not in ids  # 25.11 H100 Qwen3-30B: the erratum's VP 12 is the curated row's layout
    assert len(with_csv) == len(curated) + 456 - 70 and len(skipped) == 100  # 456 converted, 18 of them NVFP4


def test_rows_their_source_marks_as_a_regression_are_skipped(converted, table):
    """26.06.01's two GPT-OSS cells carry the archive's footnote of a known cuDNN regression (the fused MoE
    grouped GEMM); the same layouts measured 1.6x as much in 26.06 and 26.08, which stay."""
    rows, skipped = converted
    for row_id in ("mbridge-021", "mbridge-022"):
        assert "26.06.01" in table[row_id]["framework"] and table[row_id]["model"] == "GPT OSS 120B"
        assert "known software regression" in skipped[row_id].reason and "cudnn-frontend#256" in skipped[row_id].reason
    assert {"mbridge-044", "mbridge-045", "mbridge-005", "mbridge-006"} <= set(rows)


def test_text_columns_parse():
    assert parse_seq_len("8192 (torchtitan train_configs/llama3_*.toml default at benchmark commit 9dec370)") == 8192
    assert parse_seq_len("1048576") == 1048576
    assert memory_gib("47.96", "GiB sampled at iteration 100") == 47.96
    assert memory_gib("80", "GB per GPU") == pytest.approx(80e9 / GIB_BYTES) == pytest.approx(74.506, abs=1e-3)
    assert memory_gib("", "") is None
