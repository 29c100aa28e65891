"""The serving rules: which precisions a GPU runs (natively or weight-only) and which groups leave the
NVLink domain."""

import numpy as np
import pytest

from cost_model.model_loader import load_model
from cost_model.serving.memory import weight_bytes_per_rank
from cost_model.serving.plan import WEIGHT_PRECISIONS, InstanceArrays, ServingPlanArrays
from cost_model.serving.rules import kv_dtype_supported, nic_groups, serving_violations, weight_precision_mode
from cost_model.serving.step import WEIGHT_ONLY_DEQUANT_OVERHEAD, price_instances
from hardware.loader import load_cluster

pytestmark = pytest.mark.usefixtures("serving_priors")  # the physics at the documented priors


def _instances(**columns):
    return InstanceArrays.from_columns({"max_num_seqs": 64, "max_num_batched_tokens": 8192, **columns})


@pytest.mark.parametrize("cluster, fp8, fp4", [
    ("a100x8", "weight_only", "weight_only"),   # FP8 Marlin W8A16, Marlin MXFP4 / NVFP4
    ("h100x8", "native", "weight_only"),        # FP8 tensor cores; MXFP4 on Triton / Marlin W4A16
    ("b200x8", "native", "native"),
    ("mi300xx8", "native", "unsupported"),      # no FP4 tensor cores and no Marlin on AMD in vLLM's table
])
def test_which_weight_precisions_a_gpu_runs(cluster, fp8, fp4):
    gpu = load_cluster(cluster).gpu
    assert weight_precision_mode(gpu, "bf16") == "native"
    assert weight_precision_mode(gpu, "fp8") == fp8
    assert weight_precision_mode(gpu, "fp4") == fp4
    model = load_model("gpt-oss-120b").spec
    instances = _instances(tp=[1, 1, 1], weight_precision=[0, 1, 2])
    broken = serving_violations(model, load_cluster(cluster), ServingPlanArrays.aggregated(instances, 1))
    expected = [False, fp8 == "unsupported", fp4 == "unsupported"]
    np.testing.assert_array_equal(broken["precision_supported"], expected)


def test_fp8_kv_cache_still_needs_fp8():
    assert not kv_dtype_supported(load_cluster("a100x8").gpu, "fp8")
    assert kv_dtype_supported(load_cluster("h100x8").gpu, "fp8")
    model = load_model("llama3-8b").spec
    instances = _instances(tp=[1, 1], kv_dtype=[0, 1])
    broken = serving_violations(model, load_cluster("a100x8"), ServingPlanArrays.aggregated(instances, 1))
    np.testing.assert_array_equal(broken["precision_supported"], [False, True])


def test_weight_only_fp4_on_hopper_streams_fp4_bytes_and_computes_at_bf16():
    # GPT-OSS-120B (TP1 on one H100): FP4 weights are NVFP4 bytes in HBM (0.5625 B a weight), read at those
    # bytes at decode; the GEMMs run at the BF16 rate plus the dequantization, so a compute-bound prefill of
    # 8,192 tokens costs ~1.1 x BF16's GEMMs while native FP8 halves them.
    model = load_model("gpt-oss-120b").spec
    cluster = load_cluster("h100x8")
    instances = _instances(tp=[1, 1, 1], weight_precision=[WEIGHT_PRECISIONS.index(p) for p in ("bf16", "fp8", "fp4")])
    weights = weight_bytes_per_rank(model, instances)
    assert weights[2] < 0.3 * weights[0] and weights[2] < weights[1]
    pricing = price_instances(model, cluster, instances)
    decode = pricing.decode_step(np.ones(3), np.full(3, 1000.0))
    assert decode.hbm_s[2] < decode.hbm_s[1] < decode.hbm_s[0]
    assert decode.total_s[2] <= decode.total_s[1]
    prefill = pricing.prefill(np.full(3, 8192.0))
    ratio = prefill.gemm_s[2] / prefill.gemm_s[0]
    assert 1.0 + 0.5 * WEIGHT_ONLY_DEQUANT_OVERHEAD < ratio < 1.0 + WEIGHT_ONLY_DEQUANT_OVERHEAD + 1e-9
    assert prefill.gemm_s[1] < 0.7 * prefill.gemm_s[0]


def test_dense_models_have_no_ep_group_on_the_nic():
    # TP16 spans two 8-GPU NVLink domains: its all-reduces go over the NIC. A dense model has no attention-DP x
    # EP group (no dispatch/combine), so only "tp" is flagged; an MoE model's expert group is flagged too.
    cluster = load_cluster("h100x64")
    plans = ServingPlanArrays.aggregated(_instances(tp=[16, 8]), 1)
    dense = nic_groups(cluster, plans, load_model("llama3-70b").spec)
    np.testing.assert_array_equal(dense["tp"], [True, False])
    np.testing.assert_array_equal(dense["attn_dp_x_ep"], [False, False])
    moe_plans = ServingPlanArrays.aggregated(_instances(tp=[16, 1], attn_dp=[1, 16], ep=[16, 16], moe_tp=[1, 1]), 1)
    moe = nic_groups(cluster, moe_plans, load_model("deepseek-v3").spec)
    np.testing.assert_array_equal(moe["tp"], [True, False])
    np.testing.assert_array_equal(moe["attn_dp_x_ep"], [True, True])
