"""End-to-end tests of ``plan-search serve`` (search, evaluate, advice), its sweeps and studies."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]
SCENARIO_EXAMPLES = ROOT / "scenarios" / "examples"
BASE = ("serve", "h100x8", "llama3-70b", "chat-1k-1k")
"""The bundled example: Llama 3 70B on one 8 x H100 node, chat with 1k prompts and answers."""
PRICE = 2.5


def serve_json(capsys, *args: str) -> tuple[int, dict]:
    code, out, err = run(capsys, *args, "--format", "json")
    assert code in (0, 1), err
    return code, json.loads(out)


@pytest.fixture(scope="module")
def example():
    """The example with a price: its 200 best plans by goodput, every knob variant listed, and its Pareto
    frontier, searched once."""
    from optimizer.serving.report import plan_records
    from optimizer.serving.search import search_serving

    scenario = _scenario(top_k=200, best_per_layout=False, price=PRICE)
    result = search_serving(scenario, pareto=True)
    return scenario, result, plan_records(result.ranked, scenario), plan_records(result.pareto, scenario)


def _scenario(price=None, **changes):
    from cost_model.model_loader import load_model
    from cost_model.serving.workload import load_workload
    from hardware.loader import load_cluster
    from optimizer.serving.grid import ServingGrid
    from optimizer.serving.search import ServingScenario

    cluster = load_cluster("h100x8")
    if price is not None:
        cluster = cluster.with_overrides({"economics.price_per_gpu_hour_usd": price})
    model = load_model("llama3-70b").spec
    grid = ServingGrid(max_gpus=8, num_layers=model.num_layers)
    return ServingScenario(model=model, cluster=cluster, workload=load_workload("chat-1k-1k"), grid=grid, **changes)


# --- search ---------------------------------------------------------------------------------------------

def test_serve_prints_the_ranked_table_and_plan_1(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, err = run(capsys, *BASE, "--top", "3", "--price", str(PRICE))
    assert code == 0, err
    assert out.startswith("llama3-70b on h100x8: up to 8 x H100 SXM5 80GB | chat-1k-1k: ISL 1000, OSL 1000")
    assert "SLO p99 TTFT 450 ms TPOT 40 ms" in out and "objective goodput_per_gpu" in out
    assert "Top 3 plans by goodput_per_gpu (TTFT, TPOT at p99, at goodput)" in out
    assert "Plan 1:" in out and "memory per GPU" in out and "decode step" in out and "per million output tokens" in out
    assert "Traceback" not in err


def test_bundled_workload_on_the_bundled_cluster_sizes_the_fleet(capsys):
    """examples/serving-chat.yaml (20 req/s Poisson, p99 TTFT 1 s, TPOT 50 ms) on examples/cluster.yaml:
    every listed plan carries the rate within the SLO with at most the GPUs it holds, fewest GPUs first."""
    code, document = serve_json(capsys, "serve", str(ROOT / "examples" / "cluster.yaml"), "llama3-70b",
                                str(ROOT / "examples" / "serving-chat.yaml"), "--gpus", "16", "--objective", "min_gpus")
    assert code == 0 and document["scenario"]["request_rate_per_s"] == 20
    assert document["scenario"]["price_per_gpu_hour_usd"] == 2.5  # the cluster file's contract price
    needed = [plan["min_gpus_for_target"] for plan in document["plans"]]
    assert needed == sorted(needed)
    for plan in document["plans"]:
        assert plan["requests_per_s"] == pytest.approx(20) and plan["min_gpus_for_target"] <= plan["num_gpus"]
        assert plan["ttft_ms_p99"] <= 1000 and plan["tpot_ms_p99"] <= 50


def test_serve_is_serve_search(capsys):
    """``plan-search serve C M W`` runs ``serve search`` (the group's default command)."""
    _, implied = serve_json(capsys, *BASE, "--top", "4")
    _, explicit = serve_json(capsys, "serve", "search", *BASE[1:], "--top", "4")
    implied["search"].pop("seconds"), explicit["search"].pop("seconds")
    assert implied == explicit


def test_output_is_deterministic(capsys):
    _, first = serve_json(capsys, *BASE, "--top", "5", "--modes", "agg,disagg")
    _, second = serve_json(capsys, *BASE, "--top", "5", "--modes", "agg,disagg")
    first["search"].pop("seconds"), second["search"].pop("seconds")
    assert first == second


MEMORY_PARTS = {"weights", "kv", "activations", "cuda_graph", "comm_buffers", "other", "total"}
REQUIRED = {"rank", "plan", "mode", "num_gpus", "instances", "memory_gib", "kv_capacity_tokens", "max_concurrency",
            "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p90", "tpot_ms_p99",
            "output_tokens_per_s_per_gpu", "tokens_per_s_per_user", "goodput_requests_per_s_per_gpu",
            "goodput_requests_per_s", "requests_per_s", "min_gpus_for_target", "cost_usd_per_m_output_tokens", "cost_usd_per_m_input_tokens", "step_ms", "bottleneck", "broken_rules",
            "meets_slo"}


def test_json_fields_and_units(capsys):
    code, document = serve_json(capsys, *BASE, "--top", "5", "--price", str(PRICE), "--modes", "agg,disagg",
                                "--target-rate", "2")
    assert code == 0
    gpu_gib = document["scenario"]["gpu_memory_gib"]
    output_tokens = document["scenario"]["output_tokens_mean"]
    assert document["search"]["candidates"] >= document["search"]["servable"] >= document["search"]["meeting_slo"] > 0
    for plan in document["plans"]:
        assert REQUIRED <= set(plan), REQUIRED - set(plan)
        assert plan["meets_slo"] and plan["broken_rules"] == []
        # every GPU counted: the instances' GPUs times their counts
        assert plan["num_gpus"] == sum(i["gpus_per_instance"] * i["count"] for i in plan["instances"]) <= 8
        for instance in plan["instances"]:
            assert instance["tp"] * instance["attn_dp"] == instance["moe_tp"] * instance["ep"]
            assert instance["gpus_per_instance"] == instance["tp"] * instance["pp"] * instance["attn_dp"]
        for parts in plan["memory_gib"].values():
            assert set(parts) == MEMORY_PARTS
            assert sum(v for k, v in parts.items() if k != "total") == pytest.approx(parts["total"], abs=1e-5)
            assert parts["total"] <= gpu_gib + 1  # GiB per GPU, not bytes, not per instance
        # at the target rate, a plan that meets the SLO has its p99 latencies within the targets
        slo = document["scenario"]["slo"]
        assert plan["ttft_ms_p50"] <= plan["ttft_ms_p90"] <= plan["ttft_ms_p99"] <= slo["ttft_ms"]
        assert plan["tpot_ms_p50"] <= plan["tpot_ms_p90"] <= plan["tpot_ms_p99"] <= slo["tpot_ms"]
        assert plan["requests_per_s"] == pytest.approx(2.0) and plan["goodput_requests_per_s"] >= 2.0
        # $ per million output tokens counts every GPU of the plan (prefill and decode): price x GPUs over
        # the output tokens the fleet delivers at its goodput
        fleet_tokens_per_s = plan["goodput_requests_per_s"] * output_tokens
        assert plan["cost_usd_per_m_output_tokens"] == pytest.approx(
            PRICE * plan["num_gpus"] / 3600 / fleet_tokens_per_s * 1e6, rel=1e-5, abs=1e-6)
        assert {"total_ms", "host_ms", "hbm_ms", "gemm_ms"} <= set(plan["step_ms"]["decode"])
        assert plan["bottleneck"] in ("hbm", "compute", "tp_latency", "ep_comm", "host", "kv_capacity", "queueing")


def test_csv_has_one_row_per_plan_with_unit_columns(capsys):
    code, out, _ = run(capsys, *BASE, "--top", "4", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4
    assert {"plan", "num_gpus", "decode.tp", "memory_gib.instance.kv", "ttft_ms_p99", "tpot_ms_p99",
            "output_tokens_per_s_per_gpu", "step_ms.decode.total_ms"} <= set(rows[0])


def test_objectives_order_the_plans(example):
    """Each objective's plan 1 is the best of every plan that meets the SLO by that objective, and its list
    is ordered; the keys are the records' own fields."""
    from optimizer.serving.search import search_serving

    scenario, result, records, _ = example
    assert len(records) > 10
    fields = {"goodput_per_gpu": ("goodput_requests_per_s_per_gpu", -1), "throughput_per_gpu":
              ("output_tokens_per_s_per_gpu", -1), "cost_per_mtok": ("cost_usd_per_m_output_tokens", 1)}
    from optimizer.serving.report import plan_records

    for objective, (field, sign) in fields.items():
        ranked = plan_records(search_serving(_replace(scenario, objective=objective, top_k=len(records)),
                                             pareto=False).ranked, scenario)
        values = np.asarray([r[field] for r in ranked]) * sign
        assert (np.diff(values) >= -1e-9 * np.abs(values).max()).all(), objective
        best_listed = min(sign * r[field] for r in records)  # the best of 200 plans ranked by goodput
        assert values[0] <= best_listed + 1e-9 * abs(best_listed), objective


def _replace(scenario, **changes):
    import dataclasses
    return dataclasses.replace(scenario, **changes)


def test_min_gpus_objective_needs_a_target_and_sizes_the_fleet(capsys):
    code, out, err = run(capsys, *BASE, "--objective", "min_gpus")
    assert code == 2 and err.count("\n") == 1 and "--target-rate" in err
    code, document = serve_json(capsys, *BASE, "--objective", "min_gpus", "--target-rate", "2", "--top", "5")
    assert code == 0
    needed = [p["min_gpus_for_target"] for p in document["plans"]]
    assert needed == sorted(needed) and needed[0] >= 1


def test_pareto_frontier_is_undominated(example, capsys):
    _, result, records, front = example
    assert len(front) >= 2
    per_gpu = np.asarray([p["output_tokens_per_s_per_gpu"] for p in front])
    per_user = np.asarray([p["tokens_per_s_per_user"] for p in front])
    assert (np.diff(per_gpu) <= 0).all() and (np.diff(per_user) > 0).all()
    # no plan that meets the rules but the SLOs (those listed, with every knob variant) beats a frontier point
    for plan in records:
        beats = ((plan["output_tokens_per_s_per_gpu"] >= per_gpu) & (plan["tokens_per_s_per_user"] >= per_user)
                 & ((plan["output_tokens_per_s_per_gpu"] > per_gpu) | (plan["tokens_per_s_per_user"] > per_user)))
        assert not beats.any(), plan["plan"]
    code, document = serve_json(capsys, *BASE, "--pareto")
    assert [p["plan"] for p in document["plans"]] == [p["plan"] for p in front]


# --- evaluate ---------------------------------------------------------------------------------------------

def evaluate(capsys, *flags: str, workload: str = "chat-1k-1k") -> tuple[int, dict]:
    code, out, err = run(capsys, "serve", "evaluate", "h100x8", "llama3-70b", workload, *flags, "--format", "json")
    assert code in (0, 1), err
    return code, json.loads(out)


def test_evaluate_prices_one_plan_and_says_it_meets_every_rule(capsys):
    code, document = evaluate(capsys, "--tp", "8", "--max-num-seqs", "64")
    plan = document["plan"]
    assert plan["plan"] == "1x TP8" and plan["num_gpus"] == 8
    assert code == (0 if not plan["why_not"] else 1)
    assert plan["broken_rules"] == [reason.split(":")[0] for reason in plan["why_not"]]


def test_evaluate_why_not_names_each_broken_rule(capsys):
    code, document = evaluate(capsys, "--tp", "16")
    assert code == 1
    assert any(r.startswith("fits_cluster: ") for r in document["plan"]["why_not"])
    code, document = evaluate(capsys, "--tp", "3")
    assert code == 1
    assert any(r.startswith("heads_divisible_by_tp: ") for r in document["plan"]["why_not"])
    # 70B in BF16 is 141 GB: on one 80 GB GPU the weights do not fit
    code, document = evaluate(capsys, "--tp", "1")
    assert code == 1 and any(r.startswith("weights_fit: ") for r in document["plan"]["why_not"])
    # TP2 holds the weights (70.5 GB per GPU) but no KV for a 128K-token request
    code, document = evaluate(capsys, "--tp", "2", "--max-model-len", "131072")
    assert code == 1 and any(r.startswith("kv_fits_one_request: ") for r in document["plan"]["why_not"])


def test_evaluate_table_lists_reasons(capsys):
    code, out, _ = run(capsys, "serve", "evaluate", "h100x8", "llama3-70b", "chat-1k-1k", "--tp", "3")
    assert code == 1
    assert "meets every rule: no" in out and "heads_divisible_by_tp:" in out


def test_evaluate_disaggregated_counts_both_phases(capsys):
    _, document = evaluate(capsys, "--mode", "disagg", "--tp", "4", "--prefill-tp", "2", "--prefill-instances", "2")
    plan = document["plan"]
    assert plan["mode"] == "disagg" and plan["num_gpus"] == 2 * 2 + 1 * 4
    assert [i["role"] for i in plan["instances"]] == ["prefill", "decode"]
    assert set(plan["memory_gib"]) == {"prefill", "decode"}


# --- nothing meets the SLO --------------------------------------------------------------------------------

def test_tight_tpot_gets_what_binds_and_what_would(capsys, tmp_path):
    workload = tmp_path / "tight.yaml"
    workload.write_text("preset: chat-1k-1k\nname: tight\nslo: {ttft_ms: 450, tpot_ms: 4, percentile: 99}\n")
    code, document = serve_json(capsys, "serve", "h100x8", "llama3-70b", str(workload))
    assert code == 1 and document["plans"] == []
    advice = document["advice"]
    assert "tpot_slo_met" in [b["rule"] for b in advice["binding"]]
    # max load: the closest plan is priced alone (one request in flight), the least TPOT it reaches
    assert advice["closest"]["load"] == "concurrency 1" and advice["closest"]["tpot_ms"] > 4
    relaxations = {r["name"]: r for r in advice["relaxations"]}
    assert set(relaxations) == {"more_gpus", "fp8_kv", "fp8_weights", "shorter_max_len", "looser_tpot",
                                "looser_ttft", "disaggregation"}
    looser = relaxations["looser_tpot"]
    assert looser["tried"] and looser["succeeds"] and looser["meeting_slo"] > 0
    # the looser target is the closest plan's TPOT rounded up to two digits, so that plan now meets it
    target = float(looser["change"].split("TPOT SLO ")[1].split(" ms")[0])
    assert advice["closest"]["tpot_ms"] <= target < advice["closest"]["tpot_ms"] * 1.1 + 1
    code, out, _ = run(capsys, "serve", "h100x8", "llama3-70b", str(workload))
    assert "What binds:" in out and "What would" in out and "looser_tpot" in out


def test_weights_that_do_not_fit_ask_for_more_gpus_or_fp8(capsys):
    """Llama 3 405B in BF16 is 811 GB: 8 x 80 GB hold no copy. What binds is the weights (the KV rules
    break with them: no room is left); 16 GPUs or FP8 weights (405 GB) would serve it."""
    code, document = serve_json(capsys, "serve", "h100x8", "llama3-405b", "chat-1k-1k")
    assert code == 1
    advice = document["advice"]
    assert advice["binding"][0]["rule"] == "weights_fit" and advice["closest"] is None
    relaxations = {r["name"]: r for r in advice["relaxations"]}
    assert relaxations["more_gpus"]["succeeds"] and relaxations["more_gpus"]["change"].startswith("--gpus 16")
    assert relaxations["fp8_weights"]["succeeds"]
    assert not relaxations["looser_tpot"]["tried"] and not relaxations["fp8_kv"]["succeeds"]


# --- input errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [
    (("--gpus", "9"), "--gpus"), (("--gpus", "8-4"), "--gpus"), (("--modes", "agg,split"), "--modes"),
    (("--precision", "fp6"), "--precision"), (("--kv-dtype", "int4"), "--kv-dtype"),
    (("--target-rate", "1", "--target-concurrency", "4"), "--target-concurrency"),
    (("--target-rate", "0"), "--target-rate"), (("--objective", "fastest"), "--objective"),
    (("--emit", "vllm", "--format", "csv"), "--emit"), (("--top", "0"), "--top"),
    (("--max-model-len", "10"), "--max-model-len"), (("--model-path", "x"), "--model-path"),
])
def test_input_errors_are_one_line(capsys, flags, named):
    """Each bad flag gives one line naming it and exit code 2 (FP4 weights on H100 are served weight-only,
    so an unknown precision stands for the refused one here; the GPU's refusals are the next test)."""
    code, out, err = run(capsys, *BASE, *flags)
    assert code == 2 and out == ""
    assert err.startswith("plan-search: error: ") and err.count("\n") == 1 and named in err, err


def test_unknown_workload_is_one_line(capsys):
    code, _, err = run(capsys, "serve", "h100x8", "llama3-70b", "chat-1k")
    assert code == 2 and err.count("\n") == 1 and "chat-1k-1k" in err


def test_ctrl_c_during_the_search_prints_no_result(capsys, monkeypatch):
    from optimizer.serving import search as serving_search

    calls = []
    original = serving_search.evaluate

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(serving_search, "CHUNK_PLANS", 256)
    monkeypatch.setattr(serving_search, "evaluate", interrupted)
    code, out, err = run(capsys, *BASE)
    assert code == 130 and out == "" and err.strip().splitlines()[-1] == "plan-search: aborted"


# --- sweeps and studies -----------------------------------------------------------------------------------

def test_serving_sweep_runs_every_workload(tmp_path, capsys):
    code, out, err = run(capsys, "sweep", str(SCENARIO_EXAMPLES / "serving_sweep.yaml"), "--out", str(tmp_path),
                         "--workers", "1", "--no-progress")
    assert code == 0, err
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert set(frame["workload"]) == {"chat-1k-1k", "rag-8k-1k"} and set(frame["cluster"]) == {"h100x8", "h200x8"}
    ok = frame[frame["status"] == "ok"]
    assert len(ok) and (ok["plan_num_gpus"] <= 8).all() and ok["tpot_ms_p99"].notna().all()
    assert set(frame["status"]) <= {"ok", "no_fit"}
    # the nightly gate compares serving scenarios on their own metrics, and names the workload
    changed = frame.copy()
    changed.loc[changed["rank"] == 1, "goodput_requests_per_s_per_gpu"] *= 1.2
    changed.to_parquet(tmp_path / "changed.parquet")
    code, out, _ = run(capsys, "compare", str(tmp_path / "results.parquet"), str(tmp_path / "results.parquet"))
    assert code == 0 and "0 changed" in out
    code, out, _ = run(capsys, "compare", str(tmp_path / "results.parquet"), str(tmp_path / "changed.parquet"))
    assert code == 1 and "goodput_requests_per_s_per_gpu +20.0%" in out and "workload=rag-8k-1k" in out
    assert "inputs: none changed" in out  # serving results are not mistaken for inputs


def test_serving_sweep_refuses_training_axes(tmp_path):
    from hardware.errors import InputError
    from scenarios.sweep_file import sweep_from_mapping

    with pytest.raises(InputError, match="axes.seq_length: is a training axis"):
        sweep_from_mapping({"axes": {"model": ["llama3-70b"], "cluster": ["h100x8"], "workload": ["chat-1k-1k"],
                                     "seq_length": [4096]}})
    with pytest.raises(InputError, match="unknown serving objective 'throughput'"):
        sweep_from_mapping({"objective": "throughput",
                            "axes": {"model": ["llama3-70b"], "cluster": ["h100x8"], "workload": ["chat-1k-1k"]}})
    with pytest.raises(InputError, match="serving.modes"):
        sweep_from_mapping({"serving": {"modes": ["both"]},
                            "axes": {"model": ["llama3-70b"], "cluster": ["h100x8"], "workload": ["chat-1k-1k"]}})


def test_study_holds_a_training_run_and_a_serving_fleet(tmp_path, capsys):
    code, out, err = run(capsys, "whatif", str(SCENARIO_EXAMPLES / "procurement_train_and_serve.yaml"),
                         "--out", str(tmp_path))
    assert code == 0, err
    summary = (tmp_path / "summary.md").read_text()
    assert "## Cluster options" in summary and "## Serving fleet" in summary
    import pandas as pd

    serving = pd.read_csv(tmp_path / "serving.csv")
    assert list(serving["option"]) == ["H100 x 64", "H200 x 64"]
    ok = serving[serving["status"] == "ok"]
    assert len(ok) and (ok["min_gpus_for_target"] >= 1).all()
    # every GPU is priced: a pricier GPU-hour with the same plan costs more per token
    assert (ok["cost_usd_per_m_output_tokens"] > 0).all()


# --- engine arguments -------------------------------------------------------------------------------------

def test_emit_prints_the_engine_arguments_of_plan_1(capsys):
    code, document = serve_json(capsys, *BASE, "--top", "2", "--emit", "vllm", "--model-path",
                                "meta-llama/Meta-Llama-3-70B")
    assert code == 0
    (emission,) = document["emit"]
    plan = document["plans"][0]
    serve = plan["instances"][0]
    argv = emission["argv"]
    assert emission["engine"] == "vllm" and emission["tested_version"].startswith("vLLM")
    assert "meta-llama/Meta-Llama-3-70B" in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == str(serve["tp"])
    assert argv[argv.index("--max-num-seqs") + 1] == str(serve["max_num_seqs"])
    assert argv[argv.index("--max-num-batched-tokens") + 1] == str(serve["max_num_batched_tokens"])


def test_emit_keeps_only_plans_the_engine_starts(capsys):
    """vLLM refuses attention-DP ranks for a dense model (vllm_dense_data_parallel): serve evaluate with
    --emit vllm names that rule; without --emit the plan only breaks the cost model's rules, if any."""
    code, document = evaluate(capsys, "--tp", "4", "--attn-dp", "2", "--emit", "vllm")
    assert code == 1 and any(r.startswith("vllm_dense_data_parallel: ") for r in document["plan"]["why_not"])


def test_disaggregated_plans_emit_a_prefill_and_a_decode_command(capsys):
    _, document = evaluate(capsys, "--mode", "disagg", "--tp", "4", "--prefill-tp", "2", "--prefill-instances", "2",
                           "--emit", "sglang")
    assert len(document["emit"]) == 2
    texts = [e["text"] for e in document["emit"]]
    assert "prefill" in texts[0] and "decode" in texts[1]


def test_what_the_gpu_cannot_serve_is_refused_before_searching(capsys):
    """An A100 has no FP8 tensor cores: FP8 weights run weight-only (FP8 Marlin), but an FP8 KV cache has no
    attention kernel there, so ``--kv-dtype fp8`` is one line naming the flag; FP4 weights on H100 are
    searched (weight-only), not refused."""
    code, out, err = run(capsys, "serve", "a100x8", "llama3-70b", "chat-1k-1k", "--kv-dtype", "fp8")
    assert code == 2 and out == "" and "--kv-dtype" in err and err.count("\n") == 1
    code, out, err = run(capsys, "serve", "h100x8", "llama3-8b", "chat-1k-1k", "--precision", "fp4", "--gpus", "1")
    assert code == 0 and "weights fp4" in out, err
