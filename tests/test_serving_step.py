"""Decode and prefill step times of serving instances: hand-derived floors and the properties the issue
names (TPOT never falls as batch or context grows; Splitwise's TP4 vs TP8)."""

import math

import numpy as np
import pytest

from cost_model.model_loader import load_model, model_input_from_mapping
from cost_model.serving.options import ServingOptions
from cost_model.serving.plan import InstanceArrays
from cost_model.serving.step import BOTTLENECKS, experts_touched, price_instances
from hardware.loader import load_cluster

pytestmark = pytest.mark.usefixtures("serving_priors")  # the physics at the documented priors

H100 = load_cluster("h100x8")
H200 = load_cluster("h200x8")
LLAMA2_70B = model_input_from_mapping(dict(
    model_type="llama", num_hidden_layers=80, hidden_size=8192, num_attention_heads=64, num_key_value_heads=8,
    intermediate_size=28672, vocab_size=32000, tie_word_embeddings=False), default_name="llama2-70b").spec


def _instances(**columns):
    return InstanceArrays.from_columns({"max_num_seqs": 256, "max_num_batched_tokens": 8192, **columns})


def test_decode_weight_read_floor_llama3_8b_bf16_one_h100():
    # Batch 1 reads every weight but the embedding table (one row per token): 16,060,522,496 bytes less
    # 128,256 x 4,096 x 2, plus 131,072 B of KV per cached token (read) and per new token (written) and the norms' and
    # residuals' 32 layers x 20 x 4,096 bytes, at 3.35 TB/s x 0.85.
    model = load_model("llama3-8b").spec
    step = price_instances(model, H100, _instances(tp=[1])).decode_step(1, 1000)
    streamed = 16_060_522_496 - 1_050_673_152 + 1000 * 131_072 + 131_072 + 32 * 20 * 4096
    assert step.hbm_s[0] == pytest.approx(streamed / (3350e9 * 0.85), rel=1e-12)
    # With CUDA graphs (and no overlap scheduler) the step is the per-step overhead, one request's host work
    # and the graph launch, then the GPU: the larger of the HBM stream and the GEMMs (whose own weight reads
    # and kernel overheads put them a little above it) plus the fixed time of the 260 other kernels
    # (32 layers x (6 attention + 2 MLP) + 4 head and embedding kernels, 4 us each: 1.04 ms).
    assert step.total_s[0] == pytest.approx(1e-3 + 10e-6 + 30e-6 + step.gpu_s[0])
    fixed = (32 * (6 + 2) + 4) * 4e-6
    assert step.hbm_s[0] + fixed <= step.gpu_s[0] <= step.hbm_s[0] + fixed + 0.15 * step.hbm_s[0]
    assert step.bottleneck[0] == "hbm"


def test_experts_touched_by_hand():
    # DeepSeek-V3: 256 experts, top-8. One token touches 8; two touch 256 (1 - (248/256)^2) = 15.75.
    assert experts_touched(256, 8, 1) == pytest.approx(8.0)
    assert experts_touched(256, 8, 2) == pytest.approx(256 * (1 - (248 / 256) ** 2))
    assert experts_touched(256, 8, 10_000) == pytest.approx(256.0)


def test_eager_decode_adds_the_host_issue_to_the_gpu_work():
    # Splitwise's profile (serving_runs.csv): Llama 2 70B at batch 1 on H100, eager, falls from TP2 to TP4 by
    # about the weight read TP4 saves (37.3 -> 29.5 ms): without an overlap scheduler the host's ~1,100 kernel
    # issues (the same at every TP degree: each rank's process issues its own copy) and the GPU's work add.
    pricing = price_instances(LLAMA2_70B, H100, _instances(tp=[2, 4, 8], cuda_graphs=False))
    step = pricing.decode_step(1, 640)
    kernels = pricing.kernels_per_pass
    assert np.all(kernels == kernels[0])
    host = 1e-3 + 10e-6 + kernels * 20e-6          # step overhead + one request + issue, at the priors
    np.testing.assert_allclose(step.host_s, host)
    np.testing.assert_allclose(step.total_s, host + step.gpu_s)
    # TP2 -> TP4 saves half the weight read per GPU (12 of 24 ms), and the step falls by as much.
    assert step.total_s[0] - step.total_s[1] == pytest.approx(step.gpu_s[0] - step.gpu_s[1])
    assert step.gpu_s[0] - step.gpu_s[1] > 0.45 * step.hbm_s[0]
    # (Splitwise measures TP8 no faster than TP4, 29.8 vs 29.7 ms; the model gives TP8 6 ms faster: the eager
    # small-message all-reduce latency of 8 ranks is not in the collectives' alpha term.)
    assert step.total_s[2] < step.total_s[1]


def test_tp_all_reduce_latency_does_not_shrink_with_tp():
    model = load_model("llama3-70b").spec
    for cluster in (H100, load_cluster("a100x8")):
        step = price_instances(model, cluster, _instances(tp=[2, 4, 8])).decode_step(1, 1000)
        assert np.all(np.diff(step.tp_comm_s) >= 0)
        # 161 all-reduces of 16 KiB: latency bound, each at least one NVLink latency (2 us).
        assert np.all(step.tp_comm_s >= 161 * 2e-6)


GRID_MODELS = [
    ("llama3-8b", dict(tp=[1, 2], weight_precision=[0, 1])),
    ("llama3-70b", dict(tp=[4, 8], pp=[1, 2], cuda_graphs=[True, False])),
    ("deepseek-v3", dict(tp=[8, 1], attn_dp=[1, 8], ep=[1, 8], moe_tp=[8, 1], weight_precision="fp8")),
    ("mixtral-8x7b", dict(tp=[2, 2], ep=[1, 2], moe_tp=[2, 1])),
    ("gpt-oss-120b", dict(tp=[1, 4], kv_dtype=[0, 1])),
]


@pytest.mark.parametrize("name,columns", GRID_MODELS)
def test_tpot_never_falls_as_batch_or_context_grows(name, columns):
    model = load_model(name).spec
    pricing = price_instances(model, H200, _instances(**columns))
    n = len(pricing.instances)
    batches = np.array([1, 2, 3, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024], dtype=float)
    contexts = np.array([1, 100, 1000, 4000, 16000, 64000], dtype=float)
    for context in contexts:
        tpot = pricing.decode_step(np.tile(batches, (n, 1)), context).total_s
        assert np.all(np.diff(tpot, axis=1) >= -1e-12), (name, context, tpot)
    for batch in batches:
        tpot = pricing.decode_step(batch, np.tile(contexts, (n, 1))).total_s
        assert np.all(np.diff(tpot, axis=1) >= -1e-12), (name, batch, tpot)


def test_speculative_verify_reads_weights_once():
    model = load_model("llama3-70b").spec
    pricing = price_instances(model, H100, _instances(tp=[4]))
    plain = pricing.decode_step(8, 2000)
    verify = pricing.decode_step(8, 2000, verify_tokens=4)
    # Four tokens per request through the GEMMs and attention; the weights and each request's KV cache are
    # read once, so HBM traffic grows only by the new tokens' KV writes and element-wise bytes.
    assert verify.gemm_s[0] > plain.gemm_s[0]
    # The attention kernel streams each request's KV once whatever the tokens verified: 8 requests x 2,000
    # tokens x 80 layers x (2 KV heads per TP4 rank x 128 x K and V x 2 bytes) = 1.31 GB at 0.85 x 3.35 TB/s
    # = 0.46 ms, above even the four tokens' FLOPs (8 x 4 x 2,000 pairs x 80 layers x 16 heads x 2 x 256 =
    # 42 GFLOP at 0.436 x 989 TFLOP/s = 0.10 ms): verify does not slow the kernel down.
    kv_read_s = 8 * 2000 * 80 * (2 * 128 * 2 * 2) / (3350e9 * H100.gpu.hbm_efficiency)
    assert plain.attention_s[0] == pytest.approx(kv_read_s, rel=0.02)
    assert verify.attention_s[0] == pytest.approx(kv_read_s, rel=0.02)
    assert verify.hbm_s[0] - plain.hbm_s[0] < 0.01 * plain.hbm_s[0]
    assert verify.total_s[0] < 2 * plain.total_s[0]


def test_moe_decode_reads_only_touched_experts():
    model = load_model("deepseek-v3").spec
    pricing = price_instances(model, H200, _instances(tp=[8], weight_precision="fp8"))
    one, many = pricing.decode_step([1], 1000), pricing.decode_step([4096], 1000)
    # At batch 1 each MoE layer reads 8 of 256 experts; at 4,096 tokens all of them: 58 layers x 248
    # experts x 3 x 7,168 x 2,048 / 8 ranks x 1 byte more.
    extra = 58 * 248 * 3 * 7168 * 2048 / 8
    assert many.hbm_s[0] - one.hbm_s[0] > extra / (4800e9 * 0.85)


def test_prefill_is_compute_bound_and_its_all_reduce_bandwidth_bound():
    model = load_model("llama3-70b").spec
    pricing = price_instances(model, H100, _instances(tp=[8]))
    step = pricing.prefill(8192)
    # 8,192 tokens x 2 x 70.55e9 / 8 GPUs ~ 144 TFLOP per GPU over 989 TFLOP/s x efficiency.
    flops = 2 * 8192 * (70_553_706_496 - 128_256 * 8192) / 8
    assert step.gemm_s[0] > flops / (989e12 * 0.678)
    assert step.bottleneck[0] == "compute"
    small = pricing.prefill(64)
    # 161 all-reduces of 8,192 x 8,192 x 2 bytes: far above their latency, unlike decode.
    assert step.tp_comm_s[0] > 20 * small.tp_comm_s[0]


def test_bottleneck_labels_and_shapes():
    model = load_model("llama3-8b").spec
    pricing = price_instances(model, H100, _instances(tp=[1, 2, 4], cuda_graphs=[True, False, True]))
    step = pricing.decode_step(np.array([[1, 64, 512]] * 3), 2048)
    assert step.total_s.shape == (3, 3) and step.bottleneck.shape == (3, 3)
    assert set(step.bottleneck.ravel()) <= set(BOTTLENECKS)
    assert step.bottleneck[1, 0] == "host"


def test_step_overhead_and_eager_issue_come_from_options():
    model = load_model("llama3-8b").spec
    slow = ServingOptions(step_overhead_us=5000.0, step_overhead_per_request_us=40.0, eager_kernel_issue_us=100.0)
    pricing = price_instances(model, H100, _instances(tp=[1], cuda_graphs=False), slow)
    step = pricing.decode_step(1, 100)
    kernels = pricing.kernels_per_pass[0]
    # Without an overlap scheduler the host's work (overhead, per request, every kernel's issue) and the GPU's add.
    assert step.host_s[0] == pytest.approx(5e-3 + 40e-6 + kernels * 100e-6)
    assert step.total_s[0] == pytest.approx(step.host_s[0] + step.gpu_s[0])
    # Eight requests: the host's per-request work eight times.
    eight = pricing.decode_step(8, 100)
    assert eight.total_s[0] == pytest.approx(5e-3 + 8 * 40e-6 + kernels * 100e-6 + eight.gpu_s[0])
    # With an overlap scheduler the host prepares the next step while the GPU runs this one: the longer binds.
    overlapped = price_instances(model, H100, _instances(tp=[1], cuda_graphs=False),
                                 slow.with_changes(overlap_scheduler=True)).decode_step(1, 100)
    assert overlapped.total_s[0] == pytest.approx(max(step.host_s[0], step.gpu_s[0]))


@pytest.mark.parametrize("name", ["llama3-70b", "deepseek-v3", "mixtral-8x7b", "qwen3-30b-a3b"])
def test_prefill_gemm_flops_are_the_flop_model_s(name):
    # One request of s tokens on one GPU: the GEMMs run 2 s x (matmul weights each token passes, top-k
    # experts only), cost_model.flops' projection count, plus the LM head for the last token only.
    from cost_model.flops import forward_flops_per_sequence
    model = load_model(name).spec
    s = 4096
    step = price_instances(model, H200, _instances(tp=[1])).prefill(s)
    expected = forward_flops_per_sequence(model, s)["projections"] + 2 * model.hidden_size * model.vocab_size
    assert step.gemm_flops[0] == pytest.approx(expected, rel=1e-9)
    # TP 8 splits them, except what every rank computes whole: the router (h x E per MoE layer), K and V
    # projections of KV heads replicated past TP = n_kv (Qwen3-30B-A3B: 4 KV heads, one per rank at TP 8),
    # and MLA's down-projections (q_a, kv_a).
    split = price_instances(model, H200, _instances(tp=[8])).prefill(s)
    h, layers = model.hidden_size, model.num_layers
    whole = 2 * s * h * model.num_experts * model.num_moe_layers * (1 - 1 / 8)
    if model.is_mla:
        whole += 2 * s * h * (model.q_lora_rank + model.kv_lora_rank + model.qk_rope_head_dim) * layers * (1 - 1 / 8)
    else:
        kv_heads_per_rank = max(1, -(-model.num_kv_heads // 8))
        whole += 2 * s * h * 2 * model.head_dim * (kv_heads_per_rank - model.num_kv_heads / 8) * layers
    assert split.gemm_flops[0] == pytest.approx(expected / 8 + whole, rel=1e-9)


def test_moe_prefill_wants_large_token_batches():
    # DeepSeek-V3 at TP 8: a 256-token prefill touches nearly every expert (256 (1 - (248/256)^256) = 255.9)
    # with 8 tokens each, padded to 64-row blocks, and reads all 671B weights' shards; 8,192 tokens fill the
    # blocks and amortise the reads: a token of the small prefill costs 3.8 times one of the large (whose expert
    # GEMMs run at ServingOptions.moe_gemm_share of the dense rate, the prior 0.53; 4.2 times at a share of 1).
    model = load_model("deepseek-v3").spec
    pricing = price_instances(model, H200, _instances(tp=[8], weight_precision="fp8"))
    small, large = pricing.prefill(256), pricing.prefill(8192, 0, 4096)
    assert small.bottleneck[0] == "hbm" and large.bottleneck[0] == "compute"
    assert small.total_s[0] / 256 > 3.5 * large.total_s[0] / 8192
    assert small.gemm_flops[0] / small.gemm_s[0] < 0.25 * large.gemm_flops[0] / large.gemm_s[0]


def test_serving_options_refuse_unphysical_values_and_read_fitted_ones(tmp_path):
    from cost_model.serving.options import serving_fitted_parameters
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        ServingOptions(gpu_memory_utilization=1.2)
    with pytest.raises(ValueError, match="kv_block_tokens"):
        ServingOptions(kv_block_tokens=0)
    with pytest.raises(ValueError, match="unknown ServingOptions field"):
        ServingOptions().with_changes(gpu_mem_util=0.8)
    fitted = tmp_path / "serving_fitted.yaml"
    fitted.write_text("parameters:\n  step_overhead_us: {value: 1234.5, prior: 1000.0}\n", encoding="utf-8")
    assert serving_fitted_parameters(fitted) == {"step_overhead_us": 1234.5}
    assert serving_fitted_parameters(tmp_path / "absent.yaml") == {}


def test_an_idle_step_costs_only_its_floor():
    model = load_model("deepseek-v3").spec
    pricing = price_instances(model, H200, _instances(tp=[8], weight_precision="fp8"))
    idle = pricing.decode_step(0, 1000)
    # No request: no GEMM, no attention, no collective, no negative split-K remainder; the step is its floor
    # (and the non-expert weights' stream), below any step with a request.
    assert idle.gemm_s[0] == 0 and idle.attention_s[0] == 0 and idle.tp_comm_s[0] == 0
    assert idle.total_s[0] >= pricing.options.step_overhead_us * 1e-6
    assert np.all(pricing.decode_step([0, 1, 2], 1000).total_s[1:] >= idle.total_s[0])


DEEPEP_LL_US = {8: (77, 114), 16: (118, 195), 32: (155, 273), 64: (173, 314), 128: (192, 369), 256: (194, 360)}
"""DeepEP low-latency dispatch and combine (us) by EP size: github.com/deepseek-ai/DeepEP docs/legacy.md @b306af0,
"Low-latency kernels with pure RDMA" (H800, 128 tokens a rank, hidden 7168, top-8, FP8 dispatch, BF16 combine)."""


@pytest.mark.parametrize("ep", sorted(DEEPEP_LL_US))
def test_ep_dispatch_and_combine_match_deepep_low_latency_kernels(ep):
    # DeepSeek-V3 (hidden 7168, top-8 of 256) decoding 128 tokens per rank, FP8, attention DP = EP, on H800: one
    # MoE layer's dispatch + combine is the published pair within 15% (ServingOptions.ep_kernel_fixed_us is
    # the dispatch rows' median intercept; the combine rows, twice the bytes, are not used to set it).
    model = load_model("deepseek-v3").spec
    cluster = load_cluster(f"h800x{max(ep, 8)}")
    inst = InstanceArrays.from_columns({"tp": [1], "ep": [ep], "attn_dp": [ep], "moe_tp": [1],
                                        "weight_precision": "fp8", "max_num_seqs": 256,
                                        "max_num_batched_tokens": 8192})
    step = price_instances(model, cluster, inst).decode_step(np.array([128.0]), np.array([2000.0]))
    per_layer_us = step.ep_comm_s[0] / model.num_moe_layers * 1e6
    assert per_layer_us == pytest.approx(sum(DEEPEP_LL_US[ep]), rel=0.15)


def test_ep_kernels_keep_their_fixed_cost_at_one_token():
    # One token per rank still pays each kernel's fixed cost (launch, signalling): two per MoE layer, not
    # the 2 us NVLink latency an all-to-all of a few KiB would cost.
    model = load_model("deepseek-v3").spec
    inst = InstanceArrays.from_columns({"tp": [1], "ep": [8], "attn_dp": [8], "moe_tp": [1],
                                        "weight_precision": "fp8", "max_num_seqs": 256,
                                        "max_num_batched_tokens": 8192})
    options = ServingOptions()
    step = price_instances(model, load_cluster("h200x8"), inst, options).decode_step(np.array([1.0]), np.array([1.0]))
    floor_s = model.num_moe_layers * 2 * options.ep_kernel_fixed_us * 1e-6
    assert floor_s < step.ep_comm_s[0] < floor_s * 1.5


def test_busiest_ep_rank_sets_moe_decode_and_fades_at_prefill(monkeypatch):
    # DeepSeek-V3, EP8 x attention DP 8, 4 requests a rank: 32 tokens, 256 token-expert pairs, 32 a rank on
    # average; the busiest rank gets f = 1 + sqrt(2 ln 8 (7/8) / 32) = 1.337 times that (Raab-Steger). Its
    # dispatch/combine bytes scale by f and it reads the experts f x 32 tokens would touch. Prefill's 8,192
    # tokens a rank leave f = 1.007.
    from cost_model.serving import step as step_module
    model = load_model("deepseek-v3").spec
    cluster = load_cluster("h200x8")
    inst = InstanceArrays.from_columns({"tp": [1], "ep": [8], "attn_dp": [8], "moe_tp": [1],
                                        "weight_precision": "fp8", "max_num_seqs": 256,
                                        "max_num_batched_tokens": 8192})
    f = 1 + math.sqrt(2 * math.log(8) * 7 / 8 / 32)
    busy = price_instances(model, cluster, inst).decode_step(np.array([4.0]), np.array([1000.0]))
    monkeypatch.setattr(step_module, "moe_max_load_factor", lambda tokens, k, ep: np.ones_like(np.asarray(tokens, float)))
    pricing = price_instances(model, cluster, inst)
    even = pricing.decode_step(np.array([4.0]), np.array([1000.0]))
    fixed_s = model.num_moe_layers * 2 * (ServingOptions().ep_kernel_fixed_us + cluster.topology.scaleup_latency_us) * 1e-6
    assert (busy.ep_comm_s[0] - fixed_s) / (even.ep_comm_s[0] - fixed_s) == pytest.approx(f, rel=1e-6)
    touched = lambda t: 256 * (1 - (1 - 8 / 256) ** t) / 8  # noqa: E731
    # ... and moves f x 32 pairs through its permute, activation and finalize, 60,416 B each at FP8 (h 7168,
    # width 2048): 7168 x 2 + 7168 + 2 x 2048 x 2 + 2048 + 2 x 7168 x 2
    # (test_moe_permute_and_activation_traffic_by_hand).
    extra_bytes = model.num_moe_layers * ((touched(32 * f) - touched(32)) * pricing.weights.expert_bytes[0]
                                          + 32 * (f - 1) * 60_416)
    assert (busy.hbm_s[0] - even.hbm_s[0]) * pricing.hbm_bytes_per_s == pytest.approx(extra_bytes, rel=1e-6)
    monkeypatch.undo()
    from cost_model.serving.queueing import moe_max_load_factor
    assert float(moe_max_load_factor(8192 * 8, 8, 8)) == pytest.approx(1.0073, abs=1e-3)


def test_graphs_replay_up_to_the_largest_captured_batch_then_run_eager():
    # vLLM replays a graph only for a captured size (max_cudagraph_capture_size 512 by default, capped at
    # max_num_seqs); a larger decode batch or a 2,048-token prefill runs eagerly, graphs on or off.
    model = load_model("llama3-70b").spec
    pricing = price_instances(model, H100, _instances(tp=[8, 8], max_num_seqs=1024, cuda_graphs=[True, False]))
    eager = pricing.eager_launch_s[0]
    graph = pricing.graph_launch_s[0]
    assert eager == pytest.approx(pricing.kernels_per_pass[0] * ServingOptions().eager_kernel_issue_us * 1e-6)
    np.testing.assert_allclose(pricing.decode_step(512, 1500).launch_s, [graph, eager])
    np.testing.assert_allclose(pricing.decode_step(513, 1500).launch_s, [eager, eager])
    np.testing.assert_allclose(pricing.prefill(2048).launch_s, [eager, eager])
    np.testing.assert_allclose(pricing.prefill(2048).total_s[0], pricing.prefill(2048).total_s[1])
    # At every batch a graphed decode step is no slower than the eager one, and faster where the host binds.
    for batch in (1, 8, 64, 512, 1024):
        on, off = pricing.decode_step(batch, 1500).total_s
        assert on <= off + 1e-15
    on, off = pricing.decode_step(1, 1500).total_s
    assert on < 0.7 * off


def test_moe_permute_and_activation_traffic_by_hand():
    # Qwen3-30B-A3B (h 2048, expert width 768, gated, top-8, 48 MoE layers) on one B200 at fp4 (NVFP4 GEMM
    # inputs, 0.5625 B an element), 100 decode tokens, no EP: 800 (token, expert) pairs a layer, each moving
    # 2048 x 2 B (the permute's read of the token) + 2048 x 0.5625 (permuted row) + 2 x 768 x 2 (the first
    # GEMM's gate and up, read by the activation) + 768 x 0.5625 (activation) + 2 x 2048 x 2 (the fused
    # finalize's atomic add of the pair's output into its token's row: a read and a write)
    # = 4096 + 1152 + 3072 + 432 + 8192 = 16,944 B: 13.5552 MB a layer, 650.6496 MB a step, which the step
    # spends on HBM one kernel after another.
    model = load_model("qwen3-30b-a3b").spec
    b200 = load_cluster("b200x8")
    pricing = price_instances(model, b200, _instances(tp=[1], weight_precision="fp4", kv_dtype="fp8"))
    per_layer = pricing._moe_elementwise_bytes(np.array([100.0]), lambda x: np.asarray(x, dtype=np.float64))
    assert per_layer[0] == pytest.approx(800 * 16_944)
    dense = price_instances(load_model("llama3-8b").spec, b200, _instances(tp=[1], weight_precision="fp4"))
    assert dense._moe_elementwise_bytes(np.array([100.0]), lambda x: np.asarray(x, dtype=np.float64))[0] == 0.0
    # The decode step streams it and pays it in its kernel chain: 48 layers x 13.5552 MB = 650.6496 MB at the
    # achieved HBM bandwidth, on top of the same step without it.
    step = pricing.decode_step(np.array([100.0]), np.array([1000.0]))
    pricing._moe_elementwise_bytes = lambda tokens, col: np.zeros_like(np.asarray(tokens, dtype=np.float64))
    without = pricing.decode_step(np.array([100.0]), np.array([1000.0]))
    assert (step.hbm_s[0] - without.hbm_s[0]) * pricing.hbm_bytes_per_s == pytest.approx(650.6496e6, rel=1e-4)
    assert step.gpu_s[0] - without.gpu_s[0] == pytest.approx(650.6496e6 / pricing.hbm_bytes_per_s, rel=1e-4)


def test_more_attention_dp_ranks_never_shrink_the_padded_expert_work():
    # Qwen3-235B (no shared expert) on EP4 at 48 tokens per attention rank: TP4 (one attention rank), TP2 x DP2 and
    # DEP4 send the MoE layers 48, 96 and 192 tokens, 36, 72 and 144 rows per local expert (top-8 of 32 local
    # experts). Each expert's rows are padded to 64-row blocks over the spread of its count
    # (queueing.expected_block_padded_rows), so the experts' GEMM time never falls as attention ranks are added.
    model = load_model("qwen3-235b-a22b").spec
    pricing = price_instances(model, H200, _instances(tp=[4, 2, 1], attn_dp=[1, 2, 4], ep=[4, 4, 4], moe_tp=[1, 1, 1],
                                                      weight_precision=["fp8"] * 3))
    tokens = np.full(3, 48.0)
    (shaped,), col = pricing._shaped(tokens)
    dense_s, moe_s, _, _ = pricing._layer_gemms(shaped, col, absorbed=True)
    experts_s = moe_s - dense_s  # router (48 tokens everywhere) and experts
    assert np.all(np.diff(experts_s) >= 0.0)


def test_fused_moe_gemm_share_slows_only_the_expert_gemms_compute():
    # Qwen3-30B-A3B (48 MoE layers, no dense layer, no shared expert; h 2048, expert width 768, gated, top-8 of
    # 128) on one H200 in BF16, one 8,192-token prefill: 65,536 (token, expert) pairs, all 128 experts touched,
    # 512 rows each on average, padded to 64-row blocks over their Poisson spread: 543.4152 rows
    # (queueing.expected_block_padded_rows). At 128 x 256 tiles on 132 SMs the first GEMM (N 1,536) runs
    # 5 x 6 x 128 = 3,840 tiles in 30 waves (0.9697), the second (N 2,048) 5,120 tiles in 39 (0.99456). FLOPs per
    # layer: 2 x 543.4152 x 128 x 1,536 x 2,048 = 4.3761e11 and 2 x 543.4152 x 128 x 2,048 x 768 = 2.1881e11 at
    # the dense BF16 rate 989 TFLOP/s x the preset's training-fitted gemm_efficiency (e.g. 0.676: 0.67497 +
    # 0.32908 = 1.00405 ms a layer, 48.194 ms over 48 layers). They are compute bound (a layer's 128 experts
    # stream 1.21 GB in 0.30 ms), so halving the share adds exactly that, and quartering it three times that.
    from cost_model.serving.queueing import expected_block_padded_rows
    model = load_model("qwen3-30b-a3b").spec
    inst = _instances(tp=[1], weight_precision="bf16")
    steps = {s: price_instances(model, H200, inst, ServingOptions(moe_gemm_share=s)).prefill(8192.0)
             for s in (1.0, 0.5, 0.25)}
    assert float(expected_block_padded_rows(np.array(512.0), 64.0)) == pytest.approx(543.4152, rel=1e-6)
    rate = 989e12 * H200.gpu.gemm_efficiency
    per_layer_s = (2 * 543.4152 * 128 * 1536 * 2048 / 0.96969697 + 2 * 543.4152 * 128 * 2048 * 768 / (5120 / (39 * 132))) / rate
    assert 48 * per_layer_s * H200.gpu.gemm_efficiency / 0.676 == pytest.approx(48.194e-3, rel=1e-4)
    assert steps[0.5].gemm_s[0] - steps[1.0].gemm_s[0] == pytest.approx(48 * per_layer_s, rel=1e-4)
    assert steps[0.25].gemm_s[0] - steps[1.0].gemm_s[0] == pytest.approx(3 * 48 * per_layer_s, rel=1e-4)
    # Nothing else moves: the streamed bytes, the collectives, the FLOP count.
    for s in (0.5, 0.25):
        assert steps[s].hbm_s[0] == steps[1.0].hbm_s[0]
        assert steps[s].gemm_flops[0] == steps[1.0].gemm_flops[0]
        assert steps[s].total_s[0] - steps[1.0].total_s[0] == pytest.approx(
            steps[s].gemm_s[0] - steps[1.0].gemm_s[0], rel=1e-9)


def test_fused_moe_gemm_share_leaves_dense_models_bit_identical():
    for model in (load_model("llama3-8b").spec, LLAMA2_70B):
        inst = _instances(tp=[1, 8], weight_precision=["bf16", "fp8"])
        a = price_instances(model, H200, inst, ServingOptions(moe_gemm_share=1.0))
        b = price_instances(model, H200, inst, ServingOptions(moe_gemm_share=0.3))
        for step_a, step_b in ((a.prefill(np.array([8192.0, 4096.0])), b.prefill(np.array([8192.0, 4096.0]))),
                               (a.decode_step(np.array([64.0, 256.0]), np.array([2000.0, 2000.0])),
                                b.decode_step(np.array([64.0, 256.0]), np.array([2000.0, 2000.0])))):
            assert np.array_equal(step_a.total_s, step_b.total_s)
            assert np.array_equal(step_a.gemm_s, step_b.gemm_s)
