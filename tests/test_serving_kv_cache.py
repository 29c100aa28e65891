"""KV cache bytes of serving instances, derived by hand from the models' config.json figures."""

import numpy as np
import pytest

from cost_model.model_loader import load_model
from cost_model.serving.kv_cache import (kv_bytes_per_token_per_rank, kv_cache_bytes, kv_replication,
                                         kv_request_bytes_per_rank)
from cost_model.serving.plan import InstanceArrays


def _instances(**columns):
    return InstanceArrays.from_columns({"max_num_seqs": 64, "max_num_batched_tokens": 4096, **columns})


def test_llama3_70b_gqa_per_token_bf16_and_fp8():
    # 80 layers x (K and V) x 8 KV heads x head dim 128 x 2 bytes = 327,680 B = 320 KiB per token.
    model = load_model("llama3-70b").spec
    bf16, fp8 = kv_cache_bytes(model, [0, 1], 1)
    assert bf16 == 327_680 == 320 * 1024
    assert fp8 == 163_840
    assert kv_cache_bytes(model, 0, 8192) == 327_680 * 8192


def test_deepseek_v3_mla_latent_per_token_bf16_and_fp8():
    # One latent of kv_lora_rank 512 plus the rotary key of 64 per layer, no separate value:
    # 61 x (512 + 64) x 2 bytes = 70,272 B per token in BF16; half in FP8.
    model = load_model("deepseek-v3").spec
    assert list(kv_cache_bytes(model, [0, 1], 1)) == [70_272, 35_136]


def test_sliding_window_layers_hold_at_most_the_window():
    # Gemma 2 9B: 42 layers, even ones slide over 4,096 tokens; 8 KV heads x 256 x 2 (K, V) x 2 bytes
    # = 8,192 B per token and layer. 8,192 tokens: 21 layers x 8,192 + 21 x 4,096 tokens.
    model = load_model("gemma2-9b").spec
    assert kv_cache_bytes(model, 0, 8192) == (21 * 8192 + 21 * 4096) * 8192
    assert kv_cache_bytes(model, 0, 4096) == 42 * 4096 * 8192


def test_tp_splits_kv_heads_then_replicates_them():
    model = load_model("llama3-70b").spec
    inst = _instances(tp=[1, 2, 8, 16], pp=[1, 1, 1, 2])
    # Per rank: ceil(8 / tp) heads, at least one: 8, 4, 1 and 1 (replicated twice at tp 16, 40 layers).
    per_token = kv_bytes_per_token_per_rank(model, inst)
    assert list(per_token) == [327_680, 163_840, 40_960, 20_480]
    assert list(kv_replication(model, [1, 8, 16, 32])) == [1, 1, 2, 4]


def test_mla_latent_is_replicated_on_every_tp_rank():
    model = load_model("deepseek-v3").spec
    inst = _instances(tp=[1, 8], attn_dp=[8, 1], ep=[8, 8], moe_tp=[1, 1])
    assert list(kv_bytes_per_token_per_rank(model, inst)) == [70_272, 70_272]
    assert list(kv_replication(model, [1, 8])) == [1, 8]


def test_pipeline_stages_hold_their_layers_heaviest_first():
    # 80 layers over 3 stages: 27, 27, 26; the heaviest holds 27 layers of 4,096 B (one head at tp 8).
    model = load_model("llama3-70b").spec
    inst = _instances(tp=[8], pp=[3])
    assert kv_bytes_per_token_per_rank(model, inst)[0] == 27 * 2 * 1 * 128 * 2


def test_requests_hold_whole_pages():
    model = load_model("llama3-8b").spec
    inst = _instances(tp=[1, 1], kv_dtype=["bf16", "fp8"])
    # Llama 3 8B: 32 layers x 2 x 8 x 128 x 2 = 131,072 B per token; 17 tokens take two pages of 16.
    assert list(kv_request_bytes_per_rank(model, inst, 17, block_tokens=16)) == [32 * 131_072, 32 * 65_536]
    assert list(kv_request_bytes_per_rank(model, inst, 16, block_tokens=16)) == [16 * 131_072, 16 * 65_536]


def test_sliding_layers_of_a_request_round_to_pages_of_the_window():
    # GPT-OSS-120B: 18 full and 18 sliding (128-token) layers, 8 KV heads x 64 x 2 x 2 = 2,048 B per token
    # and layer; 1,000 tokens in pages of 16: full layers 1,008 tokens, sliding layers 128.
    model = load_model("gpt-oss-120b").spec
    inst = _instances(tp=[1])
    assert kv_request_bytes_per_rank(model, inst, 1000, block_tokens=16)[0] == (18 * 1008 + 18 * 128) * 2048


@pytest.mark.parametrize("name", ["llama3-70b", "deepseek-v3", "gemma2-9b", "gpt-oss-120b"])
def test_fp8_kv_halves_every_figure(name):
    model = load_model(name).spec
    inst = _instances(tp=[1, 1], kv_dtype=["bf16", "fp8"])
    bf16, fp8 = kv_request_bytes_per_rank(model, inst, 5000, block_tokens=16)
    assert fp8 * 2 == bf16
    assert np.all(kv_cache_bytes(model, 1, [1, 100, 10_000]) * 2 == kv_cache_bytes(model, 0, [1, 100, 10_000]))
