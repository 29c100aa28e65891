"""trtllm-bench's own engine limits (cost_model/calibration/trtllm_bench.py) and the perf-page runs priced at them."""

from __future__ import annotations

import math

import pytest

from cost_model.calibration import serving_fit as sf
from cost_model.calibration.serving_runs import load_serving_runs
from cost_model.calibration.trtllm_bench import (benchmark_settings, checkpoint_elements, finetune_setting,
                                                 kv_cache_max_requests, running_requests_per_rank)
from cost_model.model_loader import load_model
from cost_model.params import ParameterCounts
from hardware.loader import load_cluster

GIB = 1024 ** 3
B200_NVML_GIB = 178.6 + 0.5   # preset memory_gib + the 0.5 GiB CUDA context = 183,359 MiB / 1024
H200_NVML_GIB = 139.9 + 0.5   # 143,771 MiB / 1024


@pytest.fixture(scope="module")
def table():
    return load_serving_runs()


def test_llama_70b_fp4_on_one_b200_by_hand():
    # trtllm_v10 'Llama 3.3 70B', 1000/1000, 'B200 TP1 (FP4)', KV fp8.
    model = load_model("llama3-70b").spec
    # Safetensors elements of the NVFP4 checkpoint: per layer attention 8192 x (64 + 2 x 8) x 128 + 64 x 128 x 8192
    # = 150,994,944 and MLP 3 x 8192 x 28672 = 704,643,072, 80 layers, 0.5 + 1/16 elements per weight (two weights
    # per uint8, an FP8 scale per 16); norms 2 x 8192 x 80 + 8192, embedding and LM head 128256 x 8192 each, BF16.
    quantized = (150_994_944 + 704_643_072) * 80 * 0.5625
    elements = quantized + 2 * 8192 * 80 + 8192 + 2 * 128256 * 8192
    assert checkpoint_elements(model, "fp4") == pytest.approx(elements) == pytest.approx(40_606_375_936)
    # Engine size counted at 0.5 bytes per element: 18.909 GiB; available (179.1 - 18.909) x 0.95 = 152.18 GiB;
    # a token: 2 x 80 layers x max(tp 1, 8 heads) x 128 x 1 byte = 163,840 B; a request: 2000 tokens.
    engine_gib = elements * 0.5 / GIB
    requests = (B200_NVML_GIB - engine_gib) * 0.95 / (163_840 / GIB * 2000)
    assert requests == pytest.approx(498.67, abs=0.01)
    assert kv_cache_max_requests(model, B200_NVML_GIB, "fp4", "fp8", 1, 1, 1000, 1000) == pytest.approx(requests)
    # finetune: 498.67 in [256, 1024) -> 128 x ceil(3.90) = 512; tokens 498.67 x (1 + 1000/1000) = 997 -> the
    # 2048 floor; chunked prefill off: max(2048, ISL 1000 + 512) = 2048.
    settings = benchmark_settings(model, B200_NVML_GIB, "fp4", "fp8", 1, 1, 1000, 1000)
    assert (settings.max_batch_size, settings.max_num_tokens, settings.tuned) == (512, 2048, True)
    # 3000 requests on one rank: the batch stays 512.
    assert running_requests_per_rank(512, 3000, 1) == 512


def test_qwen3_235b_fp8_on_eight_h200_with_attention_dp_by_hand():
    # trtllm_v10 'Qwen3-235B-A22B', 128/2048, 'H200 TP8 (FP8)' read as DEP8 (--tp 8), KV fp8, 3000 requests.
    model = load_model("qwen3-235b-a22b").spec
    # FP8 stores one element per weight: the checkpoint's elements are the parameters, 235,093,634,560
    # (94 layers x (attention 71,303,424 + 128 experts x 3 x 4096 x 1536 + router 4096 x 128 + norms 2 x 4096)
    # + embedding and LM head 151936 x 4096 each + final norm 4096).
    per_layer = 71_303_424 + 128 * 3 * 4096 * 1536 + 4096 * 128 + 2 * 4096
    elements = 94 * per_layer + 2 * 151_936 * 4096 + 4096
    assert elements == 235_093_634_560 == ParameterCounts(model).total
    assert checkpoint_elements(model, "fp8") == pytest.approx(elements)
    # (140.4 x 8 - 218.95) x 0.95 = 859.04 GiB over 2 x 94 x max(8, 4) x 128 B x 2176 tokens = 0.3901 GiB a request.
    requests = (H200_NVML_GIB * 8 - elements / GIB) * 0.95 / (2 * 94 * 8 * 128 / GIB * 2176)
    assert requests == pytest.approx(2201.9, abs=0.1)
    # finetune: >= 1024 -> 256 x ceil(8.60) = 2304; tokens 2201.9 x (1 + 128/2048) = 2339.5 -> 256 x ceil(9.14) =
    # 2560; chunked prefill off: max(2560, 128 + 2304) = 2560.
    settings = benchmark_settings(model, H200_NVML_GIB, "fp8", "fp8", 8, 1, 128, 2048)
    assert (settings.max_batch_size, settings.max_num_tokens) == (2304, 2560)
    # Each of the 8 attention ranks gets at most ceil(3000 / 8) = 375 of the dataset's requests.
    assert running_requests_per_rank(settings.max_batch_size, 3000, 8) == 375


def test_an_mxfp4_checkpoint_runs_build_config_defaults():
    # GPT-OSS's MXFP4 is not in TUNED_QUANTS: BuildConfig's 2048 / 8192, then max(8192, 32768 + 2048) with
    # chunked prefill off for a 32K prompt.
    model = load_model("gpt-oss-120b").spec
    short = benchmark_settings(model, B200_NVML_GIB, "fp4", "fp8", 1, 1, 1024, 1024)
    assert (short.max_batch_size, short.max_num_tokens, short.tuned) == (2048, 8192, False)
    long = benchmark_settings(model, B200_NVML_GIB, "fp4", "fp8", 1, 1, 32768, 1024)
    assert long.max_num_tokens == 32768 + 2048


def test_finetune_rounding_and_caps():
    assert finetune_setting(10, 1000, 1000, 1) == (64, 2048)          # the 64-request and 2048-token floors
    assert finetune_setting(255, 128, 128, 1) == (256, 2048)         # 32 x ceil(7.97)
    assert finetune_setting(300, 2048, 128, 1) == (384, 5120)        # 300 x 17 = 5100 -> 512 x 10
    assert finetune_setting(1e6, 128, 128, 1) == (4096, 8192)        # 4096 requests, 8192 tokens
    assert finetune_setting(1e6, 20000, 2000, 1) == (4096, 32768)    # the 32768-token cap
    assert finetune_setting(1e6, 128, 128, 4) == (1024, 2048)        # 4096 / pp 4


@pytest.mark.parametrize("name, gpu, precision, tp", [("llama3-70b", "h100-sxm", "fp8", 2),
                                                       ("qwen3-235b-a22b", "b200", "fp4", 8),
                                                       ("deepseek-v3", "h200-sxm", "fp8", 8),
                                                       ("llama3-8b", "h200-sxm", "bf16", 1)])
def test_more_kv_memory_never_lowers_the_batch(name, gpu, precision, tp):
    model = load_model(name).spec
    device_gib = load_cluster(gpu).gpu.memory_gib + 0.5
    for isl, osl in ((128, 128), (1000, 2000), (20000, 2000)):
        last = (0, 0)
        for fraction in (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99):
            s = benchmark_settings(model, device_gib, precision, "fp8", tp, 1, isl, osl, fraction=fraction)
            assert s.max_batch_size >= last[0] and s.max_num_tokens >= last[1]
            assert s.max_num_tokens >= isl + s.max_batch_size   # a whole prompt beside a full batch
            last = (s.max_batch_size, s.max_num_tokens)


def test_the_mapping_reads_the_request_tables(table):
    runs, _ = table
    by_id = {r.id: r for r in runs}
    v10 = [r for r in runs if r.source_group == "trtllm_v10"]
    assert all(r.trtllm_bench for r in v10)
    assert {(r.isl, r.osl, r.num_requests) for r in v10 if (r.isl, r.osl) in ((128, 128), (20000, 2000))} \
        == {(128, 128, 30000), (20000, 2000, 1000)}
    new = [r for r in runs if r.source_group == "trtllm_new"]
    # The new page's table lists 1024/1024 (3000) ... 1024/32768 (1000), not the 1000/1000 of its results: the
    # v1.0 page's table of the same procedure gives 1000/1000 3000.
    assert {r.num_requests for r in new if r.isl == 1000} == {3000}
    assert {r.num_requests for r in new if (r.isl, r.osl) == (8192, 1024)} == {1500}
    assert not any(r.trtllm_bench for r in runs if r.source_group in ("mlperf_v41", "splitwise_profile"))
    # trtllm_new-0001, DeepSeek R1 B200 DEP4 1000/1000: --tp 4, KV fp8, NVFP4 -> one candidate per EP and KV
    # dtype at trtllm-bench's batch (the MLA read as 128 heads of 56 keeps it small, under 3000 / 4 = 750).
    run = by_id["trtllm_new-0001"]
    model, gpu = load_model(run.model).spec, load_cluster(run.gpu).gpu
    settings = benchmark_settings(model, gpu.memory_gib + 0.5, "fp4", "fp8", 4, 1, 1000, 1000)
    candidates = sf._candidates(run, model, gpu)
    assert [(c["max_num_seqs"], c["max_num_batched_tokens"]) for c in candidates] \
        == [(settings.max_batch_size, settings.max_num_tokens)]
    # (179.1 x 4 - 378.31e9 elements x 0.5 B / 2^30 = 176.16 GiB) x 0.95 = 513.23 GiB over 2 x 61 x 128 x 56 x 1 B
    # x 2000 tokens = 1.629 GiB a request: 315.08 requests -> 128 x ceil(2.46) = 384.
    assert checkpoint_elements(model, "fp4") == pytest.approx(378.31e9, rel=1e-5)
    assert math.isclose(settings.kv_cache_max_requests, 315.08, abs_tol=0.01) and settings.max_batch_size == 384
