"""Serving memory per GPU: weights under TP/EP/PP and precisions, the KV pool and the memory rules."""

import dataclasses
import itertools

import numpy as np
import pytest

from cost_model.model_loader import load_model
from cost_model.serving.memory import GIB, instance_memory, total_weight_bytes, weight_bytes_per_rank
from cost_model.serving.options import ServingOptions
from cost_model.serving.plan import InstanceArrays
from hardware.loader import load_cluster

pytestmark = pytest.mark.usefixtures("serving_priors")  # the physics at the documented priors

H100 = load_cluster("h100x8").gpu


def _instances(**columns):
    return InstanceArrays.from_columns({"max_num_seqs": 256, "max_num_batched_tokens": 2048, **columns})


def test_llama3_8b_weights_by_precision():
    # 8,030,261,248 parameters: embedding and LM head 128,256 x 4,096 = 525,336,576 each, 65 RMSNorms of
    # 4,096 = 266,240, and 6,979,321,856 in the layers' linear layers. BF16: 2 bytes each. FP8 (per-tensor
    # scales): the linear layers take 1 byte, embeddings, head and norms stay BF16. NVFP4: 0.5625.
    model = load_model("llama3-8b").spec
    kept_bf16 = 2 * (2 * 525_336_576 + 266_240)
    linear = 6_979_321_856
    bf16, fp8, fp4 = total_weight_bytes(model, [0, 1, 2])
    assert bf16 == 16_060_522_496
    assert fp8 == kept_bf16 + linear
    assert fp4 == pytest.approx(kept_bf16 + 0.5625 * linear, rel=1e-12)


def test_mxfp4_checkpoint_quantizes_only_its_experts():
    # GPT-OSS ships MXFP4 experts (0.5 + 1/32 bytes per weight) and BF16 attention and embeddings.
    model = dataclasses.replace(load_model("gpt-oss-120b").spec, checkpoint_weight_format="mxfp4",
                                checkpoint_quantized_parts=("experts",))
    bf16, fp4 = total_weight_bytes(model, [0, 2])
    experts = 36 * 128 * (3 * 2880 * 2880 + 2 * 2880 + 2880)  # gate_up + down weights and biases
    assert bf16 - fp4 == pytest.approx(experts * (2 - 0.53125), rel=1e-12)


def test_fp8_block_checkpoint_adds_its_scales():
    # DeepSeek-V3's block FP8: one fp32 scale per 128 x 128 block, 1 + 4/16384 bytes per weight.
    base = load_model("llama3-8b").spec
    block = dataclasses.replace(base, checkpoint_weight_format="fp8_block")
    assert total_weight_bytes(block, 1)[0] - total_weight_bytes(base, 1)[0] == pytest.approx(
        6_979_321_856 * 4 / 16384, rel=1e-12)


@pytest.mark.parametrize("name", ["llama3-8b", "llama3-70b", "deepseek-v3", "mixtral-8x7b", "qwen3-30b-a3b"])
def test_more_tp_never_raises_weights_per_rank(name):
    model = load_model(name).spec
    for pp, ep, precision in itertools.product([1, 2], [1, 8], [0, 1, 2]):
        if ep > 1 and not model.is_moe:
            continue
        tp = np.array([1, 2, 4, 8, 16, 32, 64])
        tp = tp[tp >= ep] if ep > 1 else tp
        inst = _instances(tp=tp, pp=pp, ep=ep, moe_tp=tp // ep, weight_precision=precision)
        weights = weight_bytes_per_rank(model, inst)
        assert np.all(np.diff(weights) <= 0), (name, pp, ep, precision, weights)


def test_tp_splits_llama3_70b_weights_except_norms_and_replicated_kv():
    model = load_model("llama3-70b").spec
    one, eight, sixteen = weight_bytes_per_rank(model, _instances(tp=[1, 8, 16]))
    assert one == 2 * 70_553_706_496
    # Norms (80 x 2 + 1 of 8,192) are on every rank. The K and V projections (80 layers x 2 x 8,192 x
    # 8 heads x 128, BF16) split 8 ways at TP 8 and stay at one head's share at TP 16; the rest halves.
    norms = (80 * 2 + 1) * 8192 * 2
    kv = 80 * 2 * 8192 * 8 * 128 * 2
    assert eight == pytest.approx(norms + (one - norms - kv) / 8 + kv / 8, rel=1e-12)
    assert sixteen == pytest.approx(norms + (one - norms - kv) / 16 + kv / 8, rel=1e-12)


def test_experts_split_over_ep_times_moe_tp():
    model = load_model("deepseek-v3").spec
    tp8, dep8 = weight_bytes_per_rank(model, _instances(tp=[8, 1], attn_dp=[1, 8], ep=[1, 8], moe_tp=[8, 1],
                                                        weight_precision="fp8"))
    # The routed experts (58 MoE layers x 256 x 3 x 7,168 x 2,048 weights) split 8 ways either way;
    # attention-DP replicates attention and the rest, so the DEP layout holds more per GPU.
    assert dep8 > tp8
    experts = 58 * 256 * 3 * 7168 * 2048
    assert tp8 > experts / 8 and dep8 > experts / 8


def test_kv_capacity_of_llama3_8b_on_one_h100_by_hand():
    model = load_model("llama3-8b").spec
    options = ServingOptions()
    memory = instance_memory(model, H100, _instances(tp=[1], cuda_graphs=False), 8192, options)
    # Budget 0.9 x (79.1 + 0.5) GiB; weights 16,060,522,496 B; 1.79 GiB outside PyTorch; no NCCL (TP 1).
    # Prefill workspace, 2,048 tokens: (2h + max(QKV + attention output, 3F)) x 2 bytes
    # = (8,192 + 43,008) x 2 = 102,400 B per token; 256 sampled requests' fp32 logits, probabilities and
    # log-probabilities, 256 x 128,256 x 12 B.
    budget = 0.9 * 79.6 * GIB
    activations = 2048 * 102_400 + 256 * 128_256 * 12
    left = budget - 16_060_522_496 - 1.79 * GIB - activations
    page = 16 * 131_072
    assert memory.activations[0] == activations
    assert memory.kv_capacity_tokens[0] == np.floor(left / page) * 16
    assert memory.max_concurrency[0] == np.floor(np.floor(left / page) * page / (8192 * 131_072))
    assert memory.weights_fit[0] and memory.kv_fits_one_request[0] and memory.prefill_workspace_fits[0]
    breakdown = memory.breakdown_gib
    assert sum(v[0] for v in breakdown.values()) <= budget / GIB


def test_vllm_memory_profile_of_llama3_8b_on_h100():
    # vllm-project/vllm PR #10511 (V0 engine, Dec 2024), Meta-Llama-3-8B on one H100: 71.29 GiB usable,
    # weights 14.96 GiB, non-torch 1.79 GiB, activation peak 1.26 GiB (8,192-token profile run, 256
    # sequences), 53.29 GiB of KV cache; at TP 2 the weights halve and non-torch memory doubles (3.58 GiB).
    # V0 captured its CUDA graphs after sizing the KV cache, outside the budget: priced without graphs.
    model = load_model("llama3-8b").spec
    inst = _instances(tp=[1, 2], max_num_batched_tokens=8192, cuda_graphs=False)
    memory = instance_memory(model, H100, inst, 8192, topology=load_cluster("h100x8").topology)
    assert memory.weights[0] / GIB == pytest.approx(14.96, abs=0.01)
    assert memory.weights[1] / GIB == pytest.approx(7.48, abs=0.01)
    assert memory.activations[0] / GIB == pytest.approx(1.26, rel=0.15)
    assert memory.kv[0] / GIB == pytest.approx(53.29, rel=0.02)
    assert (memory.other[1] + memory.comm_buffers[1]) / GIB == pytest.approx(3.58, rel=0.01)


def test_memory_rules_break_where_they_should():
    model = load_model("llama3-70b").spec
    inst = _instances(tp=[1, 2, 2, 8], max_num_batched_tokens=[2048, 2048, 2048, 2_000_000])
    memory = instance_memory(model, H100, inst, [8192, 8192, 500_000, 8192])
    # 141 GB of BF16 weights do not fit one 80 GB GPU; TP 2 leaves room for a few 8K requests but not for
    # one of 500K tokens (160 GB of KV); a 2M-token prefill budget (54 KB of activations per token) does not
    # fit at TP 8.
    assert list(memory.weights_fit) == [False, True, True, True]
    assert list(memory.kv_fits_one_request) == [False, True, False, False]
    assert list(memory.prefill_workspace_fits) == [False, True, True, False]
    assert memory.kv[0] == 0 and memory.kv_capacity_tokens[3] == 0


@pytest.mark.parametrize("name", ["llama3-8b", "llama3-70b", "deepseek-v3", "gpt-oss-120b", "gemma2-27b"])
def test_fp8_kv_never_lowers_capacity(name):
    model = load_model(name).spec
    rows = list(itertools.product([1, 2, 4, 8], [1, 2], [0, 1, 2], [True, False], [256, 8192]))
    columns = {key: [row[i] for row in rows] for i, key in
               enumerate(["tp", "pp", "weight_precision", "cuda_graphs", "max_num_batched_tokens"])}
    base = _instances(**columns, kv_dtype="bf16")
    fp8 = _instances(**columns, kv_dtype="fp8")
    bf16_memory, fp8_memory = (instance_memory(model, H100, inst, 32_768) for inst in (base, fp8))
    assert np.all(fp8_memory.kv_capacity_tokens >= bf16_memory.kv_capacity_tokens)
    assert np.all(fp8_memory.max_concurrency >= bf16_memory.max_concurrency)
    grew = bf16_memory.kv_capacity_tokens > 0
    assert np.all(fp8_memory.kv_capacity_tokens[grew] >= 2 * bf16_memory.kv_capacity_tokens[grew] - 16)


def test_ep_buffers_and_nccl_communicators():
    model = load_model("deepseek-v3").spec
    memory = instance_memory(model, load_cluster("h200x8").gpu,
                             _instances(tp=[8, 1], attn_dp=[1, 8], ep=[1, 8], moe_tp=[8, 1], weight_precision="fp8"),
                             4096)
    nccl = 294 * 2 ** 20
    # TP 8: one TP communicator and the custom all-reduce's 8 MiB. DEP 8: one EP communicator and DeepEP's
    # low-latency buffers: odd/even send areas of 256 experts x 128 tokens x 7,168 x 2 B (combine) and
    # receive areas of 256 x 128 x (7,168 x 2 + 16) B.
    assert memory.comm_buffers[0] == nccl + 8 * 2 ** 20
    assert memory.comm_buffers[1] == nccl + 2 * 256 * 128 * 7168 * 2 + 2 * 256 * 128 * (7168 * 2 + 16)


def test_sliding_window_requests_fit_beyond_the_per_token_capacity():
    # GPT-OSS-120B alternates 128-token sliding layers with full ones: a 32K-token request holds 18 full
    # layers x 32,768 + 18 x 128 tokens, about half of what the all-layer per-token capacity assumes.
    from cost_model.serving.memory import kv_requests_per_rank
    model = load_model("gpt-oss-120b").spec
    inst = _instances(tp=[2], weight_precision="fp4")
    memory = instance_memory(model, load_cluster("h200x8").gpu, inst, 32_768)
    exact = kv_requests_per_rank(model, inst, memory, 32_768)[0]
    naive = memory.kv_capacity_tokens[0] // 32_768
    assert exact == np.floor(memory.kv[0] / ((18 * 32_768 + 18 * 128) * 2 * 4 * 64 * 2))
    assert 1.9 * naive <= exact <= 2.0 * naive + 1
