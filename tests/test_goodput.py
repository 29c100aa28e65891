"""Goodput (cost_model/goodput.py): Young/Daly by hand, checkpoint bytes of Llama 3 405B by hand, the
published failure figures (Llama 3, Kokolis et al. 2024) from the presets, and properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cost_model.evaluate import evaluate
from cost_model.goodput import (RNG_AND_DATA_STATE_BYTES, daly_interval, effective_training_time_ratio,
                                expected_lost_work_s, poisson_below)
from cost_model.model_loader import build_training, load_model
from cost_model.plan import PlanArrays
from hardware.errors import InputError
from hardware.loader import load_cluster
from optimizer.ranking import objective_key

LLAMA3_HOURS = 54 * 24  # Llama 3 paper, section 3.3.4: a 54-day snapshot of 405B pre-training


@pytest.fixture(scope="module")
def llama405b():
    return load_model("llama3-405b").spec


def _training(model, **settings):
    base = dict(seq_length=8192, global_batch_size=2048, train_tokens=15e12)  # Llama 3 section 3.4.1
    return build_training({**base, **settings}, model=model)


def _llama3_plan(dp: int = 128) -> PlanArrays:
    """Llama 3 405B's published 8K-context layout (Dubey et al. 2024, Table 4): TP8, CP1, PP16 and DP128 on
    16,384 GPUs (DP64 on 8,192); Megatron's distributed optimizer (ZeRO-1), sequence parallel."""
    return PlanArrays.from_records([dict(tp=8, pp=16, dp=dp, micro_batch=1, zero_stage=1, sequence_parallel=True)])


def _evaluate(model, training, cluster, plans):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate(model, training, cluster, plans)


# ---- Young / Daly, by hand ------------------------------------------------------------------------

def test_daly_interval_hand_cases():
    # delta 50 s, M 20,000 s: Young sqrt(2 x 50 x 20,000) = 1,414.21 s; delta/2M = 0.00125, sqrt = 0.035355;
    # Daly: 1,414.21 x (1 + 0.011785 + 0.000139) - 50 = 1,431.08 - 50 = 1,381.08 s
    assert daly_interval(50.0, 20_000.0) == pytest.approx(1_381.08, abs=0.05)
    # delta 1,800 s, M 3,600 s (delta not small against M): Young 3,600 s; delta/2M = 0.25, sqrt 0.5;
    # Daly 3,600 x (1 + 0.1667 + 0.02778) - 1,800 = 4,300 - 1,800 = 2,500 s
    assert daly_interval(1_800.0, 3_600.0) == pytest.approx(2_500.0, abs=0.5)
    # delta >= 2M: checkpoint once per MTBF (Daly 2006, eq. 37's second branch)
    assert daly_interval(10_000.0, 4_000.0) == pytest.approx(4_000.0)
    # small delta: Daly tends to Young's sqrt(2 delta M) (within 0.3% at delta/2M = 1e-5)
    young = math.sqrt(2 * 1.0 * 50_000.0)
    assert daly_interval(1.0, 50_000.0) == pytest.approx(young, rel=3e-3)


def test_effective_training_time_ratio_hand_case():
    # tau 1,000 s, delta 10 s, R 100 s, M 10,000 s: wall / work = 10,000 e^0.01 (e^0.101 - 1) / 1,000
    # = 10 x 1.010050 x 0.106277 = 1.073446, ETTR = 0.931579
    assert effective_training_time_ratio(1_000.0, 10.0, 100.0, 10_000.0) == pytest.approx(0.931579, abs=1e-5)
    # first order: 1 - delta/tau - (tau/2 + R)/M = 1 - 0.01 - 0.06 = 0.93 (the exact model is within 0.2%)
    assert effective_training_time_ratio(1_000.0, 10.0, 100.0, 10_000.0) == pytest.approx(0.93, abs=2e-3)


def test_lost_work_and_poisson_hand_cases():
    # a failure inside a 1,000 s segment with M = 10,000 s: 10,000 - 1,000 / (e^0.1 - 1) = 491.67 s (about half)
    assert expected_lost_work_s(990.0, 10.0, 10_000.0) == pytest.approx(491.67, abs=0.01)
    # P(Poisson(2) < 3) = e^-2 (1 + 2 + 2) = 0.676676; P(X < 0) = 0
    assert poisson_below(np.array([3.0, 0.0]), np.array([2.0, 2.0])) == pytest.approx([0.676676, 0.0], abs=1e-6)


# ---- checkpoint bytes of Llama 3 405B, by hand ------------------------------------------------------

@pytest.mark.parametrize("dp, gpus", [(128, 16_384), (64, 8_192)])
def test_llama3_405b_checkpoint_bytes_by_hand(llama405b, dp, gpus):
    # One TP rank of a layer (h 16,384, 8 KV heads x 128, FFN 53,248): attention 2h^2 + 2h x 1,024 =
    # 570,425,344; MLP 3 x h x 53,248 = 2,617,245,696; / 8 = 398,458,880, plus the two replicated RMSNorms
    # 2 x 16,384 = 398,491,648. PP16 over 126 layers is 7 + 14 x 8 + 7 (Llama 3's first and last stages hold
    # one layer less), so the 8-layer middle ranks hold the most: 3,187,933,184 parameters. Saved per
    # parameter: bf16 weight 2 + fp32 master, m, v 12 = 14 bytes (no gradients), spread over the DP replicas.
    per_rank = 8 * 398_491_648 * 14 / dp + RNG_AND_DATA_STATE_BYTES
    metrics = _evaluate(llama405b, _training(llama405b), load_cluster(f"h100x{gpus}"), _llama3_plan(dp))
    assert metrics.checkpoint_bytes_per_rank[0] == pytest.approx(per_rank, rel=1e-9)
    assert per_rank == pytest.approx({128: 348_696_576, 64: 697_376_768}[dp])
    # the job writes every parameter once at 14 bytes: 405.85e9 parameters (Llama 3.1 405B's config) x 14 =
    # 5.68 TB, within 0.2% (vocabulary padding to 129,024 and the RMSNorms each TP rank keeps)
    assert metrics.checkpoint_bytes_job[0] == pytest.approx(405.85e9 * 14, rel=2e-3)


# ---- published figures ------------------------------------------------------------------------------

def test_llama3_interruptions_from_preset_rates():
    # Inputs: the h100-sxm preset's rates; 16,384 GPUs in 2,048 8-GPU nodes for 54 days.
    cluster = load_cluster("h100x16384")
    per_hour = cluster.reliability.job_failures_per_hour(16_384, 2_048)
    assert per_hour * LLAMA3_HOURS == pytest.approx(419, rel=0.20)
    assert per_hour * LLAMA3_HOURS == pytest.approx(419, rel=0.01)  # the preset states Table 5's counts
    # about 78% of them hardware (the paper's figure): all but software bugs, NCCL watchdog timeouts,
    # dependencies and host maintenance (54 + 7 + 2 + 32 = 95 of 419) = 77%
    software = 95 / 419
    assert 1 - software == pytest.approx(0.78, abs=0.02)


def test_llama3_effective_training_time_above_90_percent(llama405b):
    # Inputs: Llama 3 405B, TP8 PP16 DP128 ZeRO-1 on 16,384 H100 (h100-sxm preset: Llama 3's failure rates,
    # Tectonic's 2 TB/s sustained writes and 7 TB/s reads); synchronous checkpoints of this model's bytes
    # (0.35 GB per GPU, 5.7 TB in all: inside Llama 3's "1 MB to 4 GB per GPU", section 3.3.1) at the
    # Young/Daly interval; no hot spares: a restart waits 300 s to reschedule and 300 s to warm up.
    # Llama 3 reports "higher than 90% effective training time" (section 3.3.4).
    metrics = _evaluate(llama405b, _training(llama405b), load_cluster("h100x16384"), _llama3_plan())
    assert metrics.mtbf_s[0] / 3600 == pytest.approx(LLAMA3_HOURS / 419, rel=0.01)  # 3.1 h
    assert 0.90 < metrics.ettr[0] < 0.97
    assert metrics.effective_time_to_train_s[0] == pytest.approx(metrics.time_to_train_s[0] / metrics.ettr[0])
    assert metrics.effective_gpu_hours[0] == pytest.approx(metrics.effective_time_to_train_s[0] * 16_384 / 3600)


def test_kokolis_mttf_at_16k_gpus():
    # Inputs: the a100-sxm-80gb preset (RSC-1: 6.50 failures per 1,000 node-days, 8 A100 per node);
    # Kokolis et al. 2024 project an MTTF of 1.8 h for a 16,384-GPU job (2,048 nodes).
    cluster = load_cluster("a100x16384")
    mttf_h = 1 / cluster.reliability.job_failures_per_hour(16_384, 2_048)
    assert mttf_h == pytest.approx(1.8, rel=0.25)
    # the rate itself: 6.50 per 1,000 node-days
    per_node_day = cluster.reliability.job_failures_per_hour(8, 1) * 24
    assert per_node_day * 1000 == pytest.approx(6.50, rel=0.02)


# ---- properties -------------------------------------------------------------------------------------

def test_ettr_falls_as_gpus_grow_at_fixed_per_gpu_rate():
    model = load_model("llama3-70b").spec
    training = _training(model, global_batch_size=4096, train_tokens=1e12)
    ettrs, mtbfs = [], []
    for gpus in (1_024, 4_096, 16_384, 65_536):
        cluster = load_cluster(f"h100x{gpus}").with_overrides(
            {"reliability.network_failures_per_node_hour": 0.0, "reliability.host_failures_per_node_hour": 0.0})
        plans = PlanArrays.from_records([dict(tp=8, pp=4, dp=gpus // 32, micro_batch=1, zero_stage=1,
                                              sequence_parallel=True)])
        metrics = _evaluate(model, training, cluster, plans)
        ettrs.append(metrics.ettr[0])
        mtbfs.append(metrics.mtbf_s[0])
    assert all(a > b for a, b in zip(ettrs, ettrs[1:])), ettrs
    assert mtbfs[0] / mtbfs[-1] == pytest.approx(64)  # MTTF falls as 1/GPUs at a per-GPU rate


def test_async_and_in_memory_expose_less_than_sync(llama405b):
    cluster, plans = load_cluster("h100x16384"), _llama3_plan()
    sync, asynchronous, in_memory = (_evaluate(llama405b, _training(llama405b, checkpoint_mode=mode), cluster, plans)
                                     for mode in ("sync", "async", "in_memory"))
    # async stops only for the device-to-host copy: 0.35 GB at PCIe Gen5's rate, far below the 2.9 s write
    assert asynchronous.checkpoint_save_s[0] < sync.checkpoint_save_s[0] / 10
    assert asynchronous.checkpoint_bytes_per_rank[0] == sync.checkpoint_bytes_per_rank[0]
    # in-memory reads back from a peer node over 8 x 50 GB/s instead of the file system's 7 TB/s / 2,048 nodes
    assert in_memory.restart_s[0] < asynchronous.restart_s[0]
    assert sync.ettr[0] < asynchronous.ettr[0] <= in_memory.ettr[0] + 1e-9


def test_checkpoint_mode_needs_a_stack_that_has_it(llama405b):
    with pytest.raises(InputError, match="checkpoint_mode"):
        _training(llama405b, checkpoint_mode="in_memory", stack="torchtitan")


def test_hot_spares_shorten_restarts_and_cost_gpu_hours(llama405b):
    cluster, plans = load_cluster("h100x16384"), _llama3_plan()
    none = _evaluate(llama405b, _training(llama405b), cluster, plans)
    spared = _evaluate(llama405b, _training(llama405b, hot_spare_nodes_per=(64,)), cluster, plans)
    # one spare per 64 nodes: 32 nodes = 256 GPUs; 7.8 nodes in repair on average (0.32 failures/h x 24 h),
    # so a spare is almost always free and the 300 s reschedule is skipped
    assert spared.spare_gpus[0] == 256
    assert none.restart_s[0] - spared.restart_s[0] == pytest.approx(300, rel=1e-3)
    assert spared.ettr[0] > none.ettr[0]
    assert spared.effective_gpu_hours[0] == pytest.approx(spared.effective_time_to_train_s[0] * (16_384 + 256) / 3600)
    # with a choice, each plan takes the setting of fewest effective GPU-hours
    both = _evaluate(llama405b, _training(llama405b, hot_spare_nodes_per=(0, 64)), cluster, plans)
    assert both.effective_gpu_hours[0] == pytest.approx(min(none.effective_gpu_hours[0], spared.effective_gpu_hours[0]))


def test_time_and_cost_objectives_rank_by_effective_values(llama405b):
    metrics = _evaluate(llama405b, _training(llama405b), load_cluster("h100x16384"), _llama3_plan())
    assert objective_key(metrics, "time_to_train")[0] == pytest.approx(-metrics.tokens_per_s[0] * metrics.ettr[0])
    assert objective_key(metrics, "throughput")[0] == pytest.approx(-metrics.tokens_per_s[0])
    assert objective_key(metrics, "cost_per_token")[0] == pytest.approx(16_384 / (metrics.tokens_per_s[0] * metrics.ettr[0]))


# ---- cluster-file fields ------------------------------------------------------------------------------

def _write(tmp_path, text: str):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return path


def test_cluster_file_without_reliability_or_storage_loads_with_published_defaults(tmp_path):
    # every field spelled out, no preset: the schema's defaults apply, which are Llama 3's rates and storage
    cluster = load_cluster(_write(tmp_path, """
name: bare
gpu: {name: X, memory_gib: 80, hbm_GBps: 3350, peak_tflops_bf16: 989}
topology: {gpus_per_node: 8, num_nodes: 2048, scaleup_domain_gpus: 8, scaleup_GBps: 450, nics_per_node: 8, nic_gbps: 400}
"""))
    h100 = load_cluster("h100x16384")
    assert cluster.reliability.job_failures_per_hour(16_384, 2_048) * LLAMA3_HOURS == pytest.approx(
        h100.reliability.job_failures_per_hour(16_384, 2_048) * LLAMA3_HOURS, rel=0.01)
    assert cluster.storage.aggregate_write_GBps == 2_000
    # MI300X (no study of it) has no section: the same defaults
    assert load_cluster("mi300xx8").reliability == cluster.reliability


def test_cluster_file_overrides_reliability_and_storage(tmp_path):
    cluster = load_cluster(_write(tmp_path, """
gpu: h100-sxm
topology: {num_nodes: 16}
reliability: {reschedule_s: 60, gpu_failures_per_gpu_hour: 1.0e-5}
storage: {aggregate_write_GBps: 500}
"""))
    assert cluster.reliability.reschedule_s == 60
    assert cluster.reliability.gpu_failures_per_gpu_hour == 1e-5
    assert cluster.reliability.hbm_failures_per_gpu_hour == pytest.approx(72 / (16_384 * LLAMA3_HOURS), rel=0.01)
    assert cluster.storage.aggregate_write_GBps == 500 and cluster.storage.node_write_GBps == 50


@pytest.mark.parametrize("section, text, field", [
    ("reliability", "{gpu_failures_per_gpu_hour: -1.0e-6}", "reliability.gpu_failures_per_gpu_hour"),
    ("reliability", "{reschedule_s: .nan}", "reliability.reschedule_s"),
    ("reliability", "{node_repair_hours: 24}", "reliability.node_repair_hours"),
    ("storage", "{node_write_GBps: 0}", "storage.node_write_GBps"),
    ("storage", "{aggregate_read_GBps: true}", "storage.aggregate_read_GBps"),
])
def test_bad_reliability_or_storage_is_one_line_naming_the_field(tmp_path, section, text, field):
    path = _write(tmp_path, f"gpu: h100-sxm\ntopology: {{num_nodes: 2}}\n{section}: {text}\n")
    with pytest.raises(InputError) as error:
        load_cluster(path)
    message = str(error.value)
    assert "\n" not in message and field in message and str(path) in message


def test_no_failures_leaves_only_the_checkpoint_stops(llama405b):
    cluster = load_cluster("h100x16384").with_overrides({f"reliability.{name}": 0.0 for name in (
        "gpu_failures_per_gpu_hour", "hbm_failures_per_gpu_hour", "network_failures_per_node_hour",
        "host_failures_per_node_hour")})
    never = _evaluate(llama405b, _training(llama405b), cluster, _llama3_plan())
    assert never.ettr[0] == 1.0 and never.effective_time_to_train_s[0] == never.time_to_train_s[0]
    # a fixed interval of 600 s (rounded up to whole steps) with no failure: ETTR = tau / (tau + delta)
    fixed = _evaluate(llama405b, _training(llama405b, checkpoint_interval_s=600.0), cluster, _llama3_plan())
    tau, delta = fixed.checkpoint_interval_s[0], fixed.checkpoint_save_s[0]
    assert 600.0 <= tau < 600.0 + fixed.step_time_s[0]
    assert fixed.ettr[0] == pytest.approx(tau / (tau + delta))
