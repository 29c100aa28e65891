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
    # GPT-OSS-120B (TP1 on one H100): its MXFP4 experts stay 4-bit in HBM, read at those bytes at decode; their
    # GEMMs run at the BF16 rate plus the dequantization and the attention the checkpoint keeps in BF16 runs as
    # BF16, so a compute-bound prefill costs between 1.05 and 1.1 x BF16's GEMMs while native FP8 halves them.
    # 16,384 tokens put 512 token-expert pairs on each expert GEMM (k = 4 of 128): compute-bound even in BF16
    # (at 8,192 the BF16 experts sit at the H100's ridge, where the 4-bit reads would win back time).
    # (No total-decode ordering against FP8: the fp4 instance reads its attention in BF16, the fp8 one
    # quantizes it on load.)
    model = load_model("gpt-oss-120b").spec
    cluster = load_cluster("h100x8")
    instances = _instances(tp=[1, 1, 1], weight_precision=[WEIGHT_PRECISIONS.index(p) for p in ("bf16", "fp8", "fp4")])
    weights = weight_bytes_per_rank(model, instances)
    assert weights[2] < 0.3 * weights[0] and weights[2] < weights[1]
    pricing = price_instances(model, cluster, instances)
    decode = pricing.decode_step(np.ones(3), np.full(3, 1000.0))
    assert decode.hbm_s[2] < decode.hbm_s[1] < decode.hbm_s[0]
    prefill = pricing.prefill(np.full(3, 16384.0))
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


def test_part_gemm_precision_follows_the_checkpoint_and_mxfp4_activations():
    # GPT-OSS ships MXFP4 experts and BF16 attention (config.json modules_to_not_convert). Served as fp4 on
    # B200 the experts run MXFP4 x MXFP8 (TensorRT-LLM's GPT-OSS support matrix): the FP8 rate; the attention
    # stays BF16. On H100 (no FP4 tensor cores) the experts are weight-only fp4. Quantized on load to fp8,
    # every part is FP8. A BF16 checkpoint (Llama 3 70B) served fp4 runs NVFP4 on every part.
    from cost_model.serving.rules import part_gemm_precision

    oss, llama = load_model("gpt-oss-120b").spec, load_model("llama3-70b").spec
    b200, h100 = load_cluster("b200x8").gpu, load_cluster("h100x8").gpu
    assert part_gemm_precision(oss, b200, "fp4", "experts") == "fp8"
    assert part_gemm_precision(oss, b200, "fp4", "attention") == "bf16"
    assert part_gemm_precision(oss, h100, "fp4", "experts") == "fp4"
    assert part_gemm_precision(oss, h100, "fp4", "attention") == "bf16"
    assert part_gemm_precision(oss, h100, "fp8", "attention") == "fp8"
    assert part_gemm_precision(oss, b200, "bf16", "experts") == "bf16"
    assert part_gemm_precision(llama, b200, "fp4", "attention") == "fp4"


def test_mxfp4_experts_compute_at_the_fp8_rate_on_blackwell():
    # GPT-OSS-120B TP1 on one B200, a compute-bound prefill of 8,192 tokens: as fp4 its experts run at the FP8
    # rate (MXFP8 activations) and its attention at BF16, so its GEMMs cost more than the fp8 instance's (FP8
    # everywhere) and less than the BF16 one's; a native NVFP4 pricing of the experts would have undercut fp8.
    model = load_model("gpt-oss-120b").spec
    cluster = load_cluster("b200x8")
    instances = _instances(tp=[1, 1, 1], weight_precision=[WEIGHT_PRECISIONS.index(p) for p in ("bf16", "fp8", "fp4")])
    prefill = price_instances(model, cluster, instances).prefill(np.full(3, 8192.0))
    assert prefill.gemm_s[1] < prefill.gemm_s[2] < prefill.gemm_s[0]
