"""Hugging Face quantization_config -> the checkpoint's weight format and quantized parts, and the weight
bytes a serving instance holds for it."""

import warnings

import pytest

from cost_model.checkpoint_quantization import checkpoint_quantization
from cost_model.model_loader import model_input_from_mapping
from cost_model.serving.memory import total_weight_bytes
from hardware.errors import InputError

ALL = ("attention", "dense_mlp", "shared_experts", "experts")

# quantization_config blocks as the checkpoints ship them (config.json on the Hugging Face hub).
DEEPSEEK_V3 = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
GPT_OSS = {"modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                      "lm_head"], "quant_method": "mxfp4"}
MODELOPT_NVFP4 = {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16, "kv_cache_quant_algo": "FP8",
                  "exclude_modules": ["lm_head"]}
MODELOPT_FP8 = {"quant_method": "modelopt", "quant_algo": "FP8", "exclude_modules": ["lm_head"]}
CT_FP8 = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
          "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
                                                                              "strategy": "channel"}}}}
CT_NVFP4_EXPERTS = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                    "ignore": ["lm_head", "re:.*self_attn.*"],
                    "config_groups": {"group_0": {"targets": ["re:.*mlp.experts.*"],
                                                  "weights": {"num_bits": 4, "type": "float", "group_size": 16,
                                                              "strategy": "tensor_group"}}}}


@pytest.mark.parametrize("config,expected", [
    (DEEPSEEK_V3, ("fp8_block", ALL)),
    (GPT_OSS, ("mxfp4", ("dense_mlp", "shared_experts", "experts"))),
    (MODELOPT_NVFP4, ("nvfp4", ALL)),
    (MODELOPT_FP8, ("fp8", ALL)),
    (CT_FP8, ("fp8", ALL)),
    (CT_NVFP4_EXPERTS, ("nvfp4", ("experts",))),
    ({"quant_method": "fp8", "modules_to_not_convert": ["model.layers.0.self_attn"]}, ("fp8", ALL)),
    (None, ("", ())),
])
def test_formats_and_parts(config, expected):
    assert checkpoint_quantization(config) == expected


def test_integer_formats_warn_and_price_unquantized():
    with pytest.warns(UserWarning, match="awq"):
        assert checkpoint_quantization({"quant_method": "awq", "bits": 4}, "m.json") == ("", ())


def test_bad_blocks_are_one_line_input_errors():
    with pytest.raises(InputError, match="modules_to_not_convert"):
        checkpoint_quantization({"quant_method": "mxfp4", "modules_to_not_convert": "lm_head"}, "m.json")
    with pytest.raises(InputError, match="every layer part"):
        checkpoint_quantization({"quant_method": "fp8", "modules_to_not_convert": ["self_attn", "mlp"]}, "m.json")


GPT_OSS_20B = dict(model_type="gpt_oss", num_hidden_layers=24, hidden_size=2880, intermediate_size=2880,
                   num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
                   num_experts_per_tok=4, attention_bias=True, vocab_size=201088, hidden_act="silu",
                   tie_word_embeddings=False, quantization_config=GPT_OSS)


def test_gpt_oss_checkpoint_holds_mxfp4_experts_and_bf16_attention():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quantization_config is priced now: no "not priced" warning
        spec = model_input_from_mapping(dict(GPT_OSS_20B)).spec
    assert spec.checkpoint_weight_format == "mxfp4"
    assert spec.checkpoint_quantized_parts == ("dense_mlp", "shared_experts", "experts")
    # 24 layers x 32 experts x (3 x 2,880^2 weights + 3 x 2,880 biases) at 0.53125 bytes, the rest in
    # BF16: 12.8 GiB, the checkpoint size OpenAI's model card gives (arXiv 2508.10925, table 1).
    experts = 24 * 32 * (3 * 2880 * 2880 + 3 * 2880)
    bf16, fp4 = total_weight_bytes(spec, [0, 2])
    assert bf16 - fp4 == pytest.approx(experts * (2 - 0.53125), rel=1e-12)
    assert fp4 / 2 ** 30 == pytest.approx(12.8, rel=0.01)


def test_deepseek_block_fp8_scales_on_every_layer_part():
    config = dict(model_type="llama", num_hidden_layers=2, hidden_size=1024, intermediate_size=4096,
                  num_attention_heads=8, vocab_size=1000, tie_word_embeddings=False, quantization_config=DEEPSEEK_V3)
    spec = model_input_from_mapping(config).spec
    plain = model_input_from_mapping({k: v for k, v in config.items() if k != "quantization_config"}).spec
    linear = 2 * (4 * 1024 * 1024 + 3 * 1024 * 4096)
    assert total_weight_bytes(spec, 1)[0] - total_weight_bytes(plain, 1)[0] == pytest.approx(linear * 4 / 16384)
