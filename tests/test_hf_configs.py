"""Hugging Face config.json files as shipped: Gemma 2, Gemma 3 (nested text_config) and Llama 4 Scout and
Maverick (nested, interleaved MoE with a shared expert), read from tests/data/hf_configs/ (copies of the
checkpoints' files; tests/data/hf_configs/README.md gives each one's source).

Every expected count is independent of plan-search's code: a published figure (the safetensors
parameter count Hugging Face shows on the model page, which is the sum of the checkpoint's tensor sizes)
or a hand calculation from the config's dimensions, written out below. Where the published total includes
a vision tower, the tower is computed by hand from ``vision_config`` and subtracted, since plan-search
prices the language model only.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from cost_model.model_loader import load_model, model_from_hf
from cost_model.params import ParameterCounts
from hardware.errors import InputError
from tests.test_cli import run

CONFIGS = Path(__file__).resolve().parent / "data" / "hf_configs"
TOLERANCE = 0.005  # the brief: within 0.5% of the published totals (the counts below are in fact exact)


def load(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(CONFIGS / name).spec


def counts(name: str) -> ParameterCounts:
    return ParameterCounts(load(name))


def config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def close(measured: int, expected: int) -> bool:
    return abs(measured - expected) <= TOLERANCE * expected


# --- vision towers, by hand (they are in the published totals, not in plan-search's) -----------------

def llama4_vision_params(v: dict, text_hidden: int) -> int:
    """Llama4VisionModel + Llama4MultiModalProjector (modeling_llama4.py), from ``vision_config``:
    class embedding h; positional embedding (patches + 1) x h; unfold-convolution patch embedding
    C*p*p x h (no bias); pre and post LayerNorms 2 x 2h; per layer q/k/v/o with biases 4(h^2 + h), MLP
    fc1 h x I + I and fc2 I x h + h, two LayerNorms 2 x 2h; pixel-shuffle adapter MLP
    (h / ratio^2) x projector_input_dim and projector_input_dim x projector_output_dim (no biases);
    projector vision_output_dim x text hidden (multi_modal_projector_bias false)."""
    h, i, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    patches = (v["image_size"] // p) ** 2
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
    adapter_in = int(h / v["pixel_shuffle_ratio"] ** 2)
    adapter = adapter_in * v["projector_input_dim"] + v["projector_input_dim"] * v["projector_output_dim"]
    return (h + (patches + 1) * h + v["num_channels"] * p * p * h + 2 * 2 * h + v["num_hidden_layers"] * layer
            + adapter + v["vision_output_dim"] * text_hidden)


def test_llama4_vision_tower_by_hand():
    # 1408 + 577*1408 + 3*14*14*1408 + 4*1408 + 34*23,807,872 + 5632*4096 + 4096*4096 + 4096*5120
    v = config("llama-4-scout-17b-16e.json")["vision_config"]
    assert llama4_vision_params(v, 5120) == 871_932_416


def gemma3_vision_params(v: dict, text_hidden: int) -> int:
    """SigLIP vision tower without its head (vision_use_head false) + Gemma3MultiModalProjector: patch
    convolution C*p*p x h + bias h; position embedding (image/p)^2 x h; per layer q/k/v/o with biases
    4(h^2 + h), MLP h x I + I and I x h + h, two LayerNorms 2 x 2h; post LayerNorm 2h; projector
    h x text hidden plus its RMSNorm over h."""
    h, i, p = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
    return (3 * p * p * h + h + (v["image_size"] // p) ** 2 * h + v["num_hidden_layers"] * layer + 2 * h
            + h * text_hidden + h)


def test_gemma3_vision_tower_by_hand():
    # 3*14*14*1152 + 1152 + 64^2*1152 + 27*15,239,504 + 2*1152 + 1152*5376 + 1152
    v = config("gemma-3-27b-it.json")["vision_config"]
    assert gemma3_vision_params(v, 5376) == 423_060_336


# --- published totals ------------------------------------------------------------------------------

# (file, published total including any vision tower, vision tower by hand, source of the published figure)
SCOUT_SAFETENSORS = 108_641_793_536      # huggingface.co/meta-llama/Llama-4-Scout-17B-16E-Instruct: safetensors BF16 count
MAVERICK_SAFETENSORS = 401_583_781_376   # huggingface.co/meta-llama/Llama-4-Maverick-17B-128E-Instruct: safetensors count
GEMMA3_27B_SAFETENSORS = 27_432_406_640  # huggingface.co/google/gemma-3-27b-it: safetensors count (KerasHub medgemma 27B: same)


@pytest.mark.parametrize("name, published, vision", [
    # huggingface.co/google/gemma-2-9b-it safetensors count; KerasHub gemma2_9b_en "params": 9241705984.
    ("gemma-2-9b-it.json", 9_241_705_984, 0),
    # huggingface.co/google/gemma-2-27b safetensors count.
    ("gemma-2-27b.json", 27_227_128_320, 0),
    ("gemma-3-27b-it.json", GEMMA3_27B_SAFETENSORS, 423_060_336),
    ("llama-4-scout-17b-16e.json", SCOUT_SAFETENSORS, 871_932_416),
    ("llama-4-maverick-17b-128e-instruct.json", MAVERICK_SAFETENSORS, 871_932_416),
])
def test_language_model_totals_match_published(name, published, vision):
    total = counts(name).total
    assert close(total, published - vision), (total, published - vision)
    assert total == published - vision  # exact, as the per-tensor accounting should be


def test_gemma2_9b_by_hand():
    # h=3584, 16 query heads and 8 KV heads of head_dim 256 (not 3584/16 = 224), F=14336 GeGLU,
    # V=256000 tied, four RMSNorms per layer.
    h, q, kv, F, V, L = 3584, 16 * 256, 8 * 256, 14336, 256000, 42
    layer = (h * q + 2 * h * kv + q * h) + 3 * h * F + 4 * h
    assert L * layer + V * h + h == 9_241_705_984
    c = counts("gemma-2-9b-it.json")
    assert c.dense_layer == layer and c.lm_head == 0 and c.layer_norms == 4 * h


def test_gemma3_27b_language_model_by_hand():
    # h=5376, 32 query / 16 KV heads of 128, q_norm and k_norm of 128, F=21504 GeGLU, four norms,
    # V=262208 (Gemma3TextConfig's default: the file's text_config gives none), tied.
    h, q, kv, F, V, L = 5376, 32 * 128, 16 * 128, 21504, 262208, 62
    layer = (h * q + 2 * h * kv + q * h + 2 * 128) + 3 * h * F + 4 * h
    text = L * layer + V * h + h
    assert text == 27_009_346_304 == GEMMA3_27B_SAFETENSORS - 423_060_336
    spec = load("gemma-3-27b-it.json")
    assert (spec.vocab_size, spec.tie_embeddings, spec.qk_norm, spec.norms_per_layer) == (262208, True, True, 4)


def llama4_by_hand(experts: int, moe_layers: int) -> tuple[int, int]:
    """Llama 4 text model: h=5120, 40 query / 8 KV heads of 128 (L2 q/k norm: no weights), dense MLP
    3 x h x 16384, MoE layer = router h x E + E routed experts of 3 x h x 8192 + one shared expert of
    3 x h x 8192, two RMSNorms per layer, untied V=202048 embedding and head, final norm."""
    h, V, L = 5120, 202048, 48
    attention = h * 40 * 128 + 2 * h * 8 * 128 + 40 * 128 * h
    expert = 3 * h * 8192
    dense = attention + 3 * h * 16384 + 2 * h
    moe_common = attention + h * experts + expert + 2 * h
    outside = 2 * V * h + h
    total = (L - moe_layers) * dense + moe_layers * (moe_common + experts * expert) + outside
    active = (L - moe_layers) * dense + moe_layers * (moe_common + 1 * expert) + outside
    return total, active


def test_llama4_scout_total_and_active():
    total, active = llama4_by_hand(experts=16, moe_layers=48)
    assert (total, active) == (107_769_861_120, 17_172_894_720)
    c = counts("llama-4-scout-17b-16e.json")
    assert (c.total, c.active) == (total, active)
    # Meta's model card (huggingface.co/meta-llama/Llama-4-Scout-17B-16E): "17B (Activated) 109B (Total)",
    # the total with the vision encoder.
    assert round(c.active / 1e9) == 17 and round((c.total + 871_932_416) / 1e9) == 109


def test_llama4_maverick_total_and_active():
    total, active = llama4_by_hand(experts=128, moe_layers=24)
    assert (total, active) == (400_711_848_960, 17_184_691_200)
    c = counts("llama-4-maverick-17b-128e-instruct.json")
    assert (c.total, c.active) == (total, active)
    # Meta's model card: "17B (Activated) 400B (Total)"; the language model is within 0.5% of 400B, and
    # so is the whole checkpoint (401.6B with the vision encoder).
    assert round(c.active / 1e9) == 17 and close(c.total, 400 * 10**9) and close(MAVERICK_SAFETENSORS, 400 * 10**9)


# --- how each convention is read -------------------------------------------------------------------

def test_llama4_layer_pattern_and_widths():
    maverick = load("llama-4-maverick-17b-128e-instruct.json")
    assert maverick.moe_layers == tuple(i % 2 == 1 for i in range(48))       # range(1, 48, 2)
    assert (maverick.ffn_hidden_size, maverick.moe_ffn_hidden_size, maverick.shared_expert_ffn_hidden_size) == \
        (16384, 8192, 8192)
    assert (maverick.num_experts, maverick.experts_per_token, maverick.tie_embeddings) == (128, 1, False)
    assert not maverick.qk_norm and maverick.gated_mlp
    scout = load("llama-4-scout-17b-16e.json")
    assert all(scout.moe_layers) and scout.num_experts == 16
    # An explicit moe_layers list wins over interleave_moe_layer_step.
    text = {**config("llama-4-maverick-17b-128e-instruct.json")["text_config"], "moe_layers": [0, 47]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        listed = model_from_hf(text)
    assert [i for i, moe in enumerate(listed.moe_layers) if moe] == [0, 47]


def test_flattened_llama4_equals_nested():
    """A text-only copy (the text_config fields at the top level, as Llama4ForCausalLM checkpoints ship
    them) counts the same as the multimodal file. Before this reading, a flattened Scout came out 5.6%
    low in total and 35% low in active parameters, and a Maverick-style file 94% high."""
    for name in ("llama-4-scout-17b-16e.json", "llama-4-maverick-17b-128e-instruct.json"):
        full = config(name)
        flat = {**full["text_config"], "model_type": "llama4", "tie_word_embeddings": False}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flat_counts = ParameterCounts(model_from_hf(flat))
        assert (flat_counts.total, flat_counts.active) == (counts(name).total, counts(name).active)


def test_gemma_sliding_window_patterns():
    gemma2 = load("gemma-2-9b-it.json")
    assert gemma2.sliding_window == 4096
    assert gemma2.sliding_window_layers == tuple(i % 2 == 0 for i in range(42))   # even layers slide
    gemma3 = load("gemma-3-27b-it.json")
    assert gemma3.sliding_window == 1024
    # sliding_window_pattern 6 (Gemma3TextConfig default): layers 5, 11, ..., 59 are global.
    assert [i for i, slides in enumerate(gemma3.sliding_window_layers) if not slides] == list(range(5, 62, 6))
    assert gemma3.num_sliding_window_layers == 52
    # layer_types, when given, names each layer and wins.
    text = {**config("gemma-3-27b-it.json")["text_config"],
            "layer_types": ["full_attention"] * 2 + ["sliding_attention"] * 60}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        listed = model_from_hf(text)
    assert listed.num_sliding_window_layers == 60 and not any(listed.sliding_window_layers[:2])


def test_hidden_activation_means_a_gated_mlp():
    base = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "vocab_size": 100}
    assert model_from_hf({**base, "hidden_activation": "gelu_pytorch_tanh"}).gated_mlp
    assert not model_from_hf({**base, "hidden_act": "gelu"}).gated_mlp


def test_text_config_must_be_a_mapping():
    with pytest.raises(InputError, match="text_config"):
        model_from_hf({"model_type": "gemma3", "text_config": [1, 2]})


# --- warnings ----------------------------------------------------------------------------------------

def test_vision_tower_and_unpriced_fields_warn_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(CONFIGS / "llama-4-scout-17b-16e.json")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    vision = [m for m in messages if "vision_config" in m]
    unpriced = [m for m in messages if "read but not priced" in m]
    assert len(vision) == 1 and "llama-4-scout-17b-16e.json" in vision[0]
    assert len(unpriced) == 1 and "llama-4-scout-17b-16e.json" in unpriced[0]
    for field in ("attention_chunk_size", "rope_scaling", "no_rope_layers", "use_qk_norm"):
        assert field in unpriced[0]
    for metadata in ("architectures", "torch_dtype", "bos_token_id", "transformers_version", "rope_theta"):
        assert metadata not in unpriced[0]


def test_metadata_and_empty_fields_do_not_warn():
    quiet = {"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
             "bos_token_id": 1, "eos_token_id": [2, 3], "pad_token_id": 0, "initializer_range": 0.02,
             "use_cache": True, "rope_theta": 500000.0, "rope_scaling": None, "attention_chunk_size": None,
             "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
             "num_attention_heads": 4, "vocab_size": 100}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model_from_hf(quiet)


def test_presets_match_the_shipped_files():
    for preset, name in (("gemma2-9b", "gemma-2-9b-it.json"), ("gemma2-27b", "gemma-2-27b.json"),
                         ("gemma3-27b", "gemma-3-27b-it.json"), ("llama4-scout", "llama-4-scout-17b-16e.json"),
                         ("llama4-maverick", "llama-4-maverick-17b-128e-instruct.json")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # presets carry no unpriced fields and no vision tower
            spec = load_model(preset).spec
        shipped = load(name)
        assert (ParameterCounts(spec).total, ParameterCounts(spec).active) == (counts(name).total, counts(name).active)
        assert (spec.sliding_window_layers, spec.moe_layers) == (shipped.sliding_window_layers, shipped.moe_layers)


# --- plan-search models show ---------------------------------------------------------------------------

def test_models_show_prints_every_dimension_and_counts(capsys):
    path = CONFIGS / "llama-4-maverick-17b-128e-instruct.json"
    code, out, err = run(capsys, "models", "show", path)
    assert code == 0
    for text in ("layers: 48", "hidden size: 5,120", "40 query, 8 key/value, head dim 128", "dense MLP width: 16,384",
                 "128 routed of width 8,192, top-1, shared expert width 8,192", "24 of 48 layers MoE (every 2nd)",
                 "vocabulary: 202,048, tied embeddings: no", "norms: rmsnorm, 2 per layer",
                 "total parameters: 400.7B (400,711,848,960)", "active parameters: 17.18B (17,184,691,200)"):
        assert text in out, text
    warning_lines = [line for line in err.splitlines() if "read but not priced" in line]
    assert len(warning_lines) == 1 and str(path) in warning_lines[0] and "attention_chunk_size" in warning_lines[0]
    code, out, _ = run(capsys, "models", "show", CONFIGS / "gemma-3-27b-it.json")
    assert code == 0
    assert "1,024 tokens on 52 of 62 layers slide (all but every 6th)" in out
    assert "rmsnorm, 4 per layer, q/k norms" in out and "tied embeddings: yes" in out


def test_models_show_json(capsys):
    code, out, _ = run(capsys, "models", "show", "llama4-scout", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["parameters"] == {"total": 107_769_861_120, "active": 17_172_894_720,
                                    "total_b": "107.8B", "active_b": "17.17B"}
    assert record["moe"]["pattern"] == "all 48 layers MoE" and record["moe"]["shared_expert_ffn_hidden_size"] == 8192
    assert record["dense_ffn_hidden_size"] == 0   # every layer is MoE: intermediate_size_mlp is unused


def test_models_show_errors_are_one_line(capsys, tmp_path):
    code, out, err = run(capsys, "models", "show", "llama4-scuot")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "unknown model preset" in err and "Traceback" not in err
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    code, _, err = run(capsys, "models", "show", bad)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"model_type": "gemma3", "text_config": {"hidden_size": 64}}))
    code, _, err = run(capsys, "models", "show", nested)
    assert code == 2 and "num_hidden_layers" in err and "Traceback" not in err


def test_models_without_subcommand_still_lists(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "llama4-maverick" in out and "400.71B total" in out
    assert run(capsys, "models", "list")[1] == out
