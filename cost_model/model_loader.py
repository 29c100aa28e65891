"""Read a model from a preset name, a ``model.yaml`` or a Hugging Face ``config.json``.

``model.yaml`` holds Hugging Face ``config.json`` fields at the top level (or ``preset: NAME`` plus the
fields to change), a few plan-search extensions for what HF expresses only through ``model_type``, and
an optional ``training:`` section::

    name: my-70b
    preset: llama3-70b          # optional: start from a preset
    num_hidden_layers: 96       # any HF config.json field overrides it
    norm_type: rmsnorm          # extensions: norm_type, position_embedding_type, gated_mlp,
                                #             add_bias_linear, add_qkv_bias
    training:
      seq_length: 8192
      global_batch_tokens: 16777216   # or global_batch_size (sequences)
      train_tokens: 15.0e12

A ``config.json`` straight from a checkpoint is read the same way (it has no ``training:`` section).
HF semantics are kept: a missing ``num_key_value_heads`` means one KV head per query head, a missing
``tie_word_embeddings`` means tied (``PretrainedConfig``'s default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from hardware.errors import InputError, did_you_mean, read_yaml_mapping
from hardware.yaml_input import checked_path, load_yaml_text, names_existing_file

from .host import graph_scope_conflict
from .model_spec import ModelSpec
from .training_spec import TRAINING_FIELDS, TrainingSpec

# model_type values whose MLP is gated (three matrices) whatever hidden_act says (Gemma's GeGLU).
_GATED_MODEL_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                      "deepseek_v2", "deepseek_v3", "gemma", "gemma2", "gemma3", "phi3", "olmo", "olmo2"}
_PLAIN_MODEL_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "gpt_bigcode", "megatron-gpt"}
_LEARNED_POSITION_TYPES = {"gpt2", "opt", "gpt_bigcode"}
_QKV_BIAS_TYPES = {"qwen2", "qwen2_moe"}
# GPT-OSS puts a bias on o_proj and on every expert's gate_up and down projections (modeling_gpt_oss.py).
_BIAS_TYPES = {"gpt2", "gpt_neox", "gptj", "opt", "bloom", "gpt_bigcode", "gpt_oss"}
# q_norm/k_norm over head_dim (modeling_qwen3.py, modeling_qwen3_moe.py, modeling_gemma3.py).
_QK_NORM_TYPES = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text"}
# Every layer uses the configured sliding_window (modeling_mistral.py, modeling_mixtral.py).
_ALL_LAYERS_SLIDING_TYPES = {"mistral", "mixtral"}

# GPT-2 style names -> Llama style names.
_ALIASES = {"n_layer": "num_hidden_layers", "n_embd": "hidden_size", "n_head": "num_attention_heads",
            "n_inner": "intermediate_size", "n_positions": "max_position_embeddings",
            "activation_function": "hidden_act", "num_layers": "num_hidden_layers",
            "ffn_hidden_size": "intermediate_size"}

_EXTENSION_FIELDS = {"name", "preset", "training", "norm_type", "position_embedding_type", "gated_mlp",
                     "add_bias_linear", "add_qkv_bias", "moe_capacity_factor", "qk_norm", "attention_sinks"}


@dataclass(frozen=True)
class ModelInput:
    """A model and the training settings its file asked for."""

    spec: ModelSpec
    training_overrides: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@lru_cache(maxsize=1)
def _preset_table() -> dict[str, dict[str, Any]]:
    text = resources.files("cost_model").joinpath("presets/models.yaml").read_text(encoding="utf-8")
    return load_yaml_text(text, "cost_model/presets/models.yaml")


def list_model_presets() -> list[str]:
    return sorted(_preset_table())


def model_preset_config(name: str) -> dict[str, Any]:
    table = _preset_table()
    if name not in table:
        raise InputError("model", "preset", f"unknown model preset '{name}'{did_you_mean(name, table)}",
                         f"use one of: {', '.join(sorted(table))}, or a model.yaml/config.json path")
    return dict(table[name])


def load_model(source: str | Path) -> ModelInput:
    """Load a model from a file path or a preset name."""
    path = Path(source)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
        config = read_yaml_mapping(path)  # JSON is YAML
        return model_input_from_mapping(config, source=str(path), default_name=path.stem)
    return model_input_from_mapping({"preset": str(source)}, source="model", default_name=str(source))


def model_input_from_mapping(config: dict[str, Any], source: str = "model",
                             default_name: str = "model") -> ModelInput:
    """Build a :class:`ModelInput` from a parsed model.yaml / config.json mapping."""
    config = dict(config)
    training = config.pop("training", None) or {}
    if not isinstance(training, dict):
        raise InputError(source, "training", "must be a mapping of training settings",
                         "write e.g. 'training: {seq_length: 8192, global_batch_size: 1024}'")
    preset = config.pop("preset", None)
    name = config.pop("name", None)
    if preset is not None:
        try:
            base = model_preset_config(str(preset))
        except InputError as exc:
            raise InputError(source, "preset", exc.problem, exc.fix) from None
        base.update(config)
        config = base
        name = name or str(preset)
    spec = model_from_hf(config, source=source, name=name or config.get("_name_or_path") or default_name)
    return ModelInput(spec=spec, training_overrides=training_overrides(training, source), source=source)


def training_overrides(training: dict[str, Any], source: str) -> dict[str, Any]:
    """Check the names in a ``training:`` section; turn ``global_batch_tokens`` into sequences later."""
    allowed = set(TRAINING_FIELDS) | {"global_batch_tokens"}
    for key in training:
        if key not in allowed:
            raise InputError(source, f"training.{key}", f"unknown training setting{did_you_mean(key, allowed)}",
                             f"known settings: {', '.join(sorted(allowed))}")
    return dict(training)


def build_training(overrides: dict[str, Any], source: str = "training", model: ModelSpec | None = None) -> TrainingSpec:
    """Make a :class:`TrainingSpec` from defaults plus overrides, resolving ``global_batch_tokens``;
    given the ``model``, also check the settings that depend on it (CUDA graphs of MoE layers)."""
    values = {key: _coerce_number(key, value, source) for key, value in overrides.items()}
    tokens = values.pop("global_batch_tokens", None)
    try:
        base = TrainingSpec(**{k: v for k, v in values.items() if k != "global_batch_size"},
                            global_batch_size=values.get("global_batch_size", TrainingSpec.global_batch_size))
    except (TypeError, ValueError) as exc:
        raise InputError(source, _field_of(str(exc), "training"), str(exc), "fix the training setting") from None
    if tokens is not None and "global_batch_size" not in values:
        if not isinstance(tokens, (int, float)) or tokens <= 0 or tokens % base.seq_length:
            raise InputError(source, "training.global_batch_tokens",
                             f"{tokens} is not a positive multiple of seq_length {base.seq_length}",
                             "give a token count that is a whole number of sequences, or global_batch_size")
        base = base.with_changes(global_batch_size=int(tokens) // base.seq_length)
    conflict = graph_scope_conflict(model, base) if model is not None else None
    if conflict:
        raise InputError(source, "training.cuda_graph_scope", conflict,
                         "set training.moe_pad_to_capacity: true (drop and pad) or moe_rank_capacity_factor with "
                         "moe_paged_stash_factor (sync-free HybridEP), or capture at most [attn, moe_router, moe_preprocess]")
    return base


_INT_SETTINGS = {"seq_length", "global_batch_size", "global_batch_tokens"}
_FLOAT_SETTINGS = {"train_tokens", "moe_capacity_factor", "moe_rank_capacity_factor", "moe_paged_stash_factor"}


def _coerce_number(key: str, value: Any, source: str) -> Any:
    """YAML 1.1 reads ``1.0e12`` (no sign in the exponent) as a string: accept it as the number it is."""
    if key not in _INT_SETTINGS | _FLOAT_SETTINGS or not isinstance(value, str):
        return value
    try:
        number = float(value.replace("_", ""))
    except ValueError:
        raise InputError(source, f"training.{key}", f"must be a number, got {value!r}", "write e.g. 15.0e+12") from None
    if key in _INT_SETTINGS:
        if number != int(number):
            raise InputError(source, f"training.{key}", f"must be a whole number, got {value!r}", "fix the value")
        return int(number)
    return number


def _field_of(message: str, prefix: str) -> str:
    """The field a validation message starts with ('seq_length must be ...'), else just the prefix."""
    from dataclasses import fields as dataclass_fields
    word = message.split(" ", 1)[0]
    known = set(TRAINING_FIELDS) | {f.name for f in dataclass_fields(ModelSpec)} | {
        "num_attention_heads", "num_key_value_heads", "intermediate_size", "num_experts_per_tok", "kv_lora_rank"}
    if word in known:
        return f"{prefix}.{word}" if prefix else word
    return prefix


def _get(config: dict[str, Any], key: str, default: Any = None) -> Any:
    return config.get(key, default)


def _as_int(config: dict[str, Any], key: str, source: str, default: Any = None, required: bool = False) -> int:
    value = config.get(key, default)
    if value is None:
        if required:
            raise InputError(source, key, "is missing", f"add '{key}: <integer>' (Hugging Face config.json name)")
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InputError(source, key, f"must be a whole number, got {value!r}", "fix the value")
    return int(value)


def model_from_hf(config: dict[str, Any], source: str = "model", name: str = "model") -> ModelSpec:
    """Map Hugging Face ``config.json`` fields (plus plan-search extensions) onto a :class:`ModelSpec`."""
    cfg = dict(config)
    for old, new in _ALIASES.items():
        if old in cfg and new not in cfg:
            cfg[new] = cfg.pop(old)
    model_type = str(cfg.get("model_type", "")).lower()

    layers = _as_int(cfg, "num_hidden_layers", source, required=True)
    hidden = _as_int(cfg, "hidden_size", source, required=True)
    heads = _as_int(cfg, "num_attention_heads", source, required=True)
    if heads <= 0 or hidden <= 0 or layers <= 0:
        raise InputError(source, "num_hidden_layers/hidden_size/num_attention_heads", "must be positive",
                         "fix the value")
    kv_heads = _as_int(cfg, "num_key_value_heads", source, default=None) or heads
    head_dim = _as_int(cfg, "head_dim", source, default=None) or hidden // heads
    vocab = _as_int(cfg, "vocab_size", source, required=True)

    hidden_act = str(cfg.get("hidden_act", cfg.get("hidden_activation", "silu"))).lower()
    if "gated_mlp" in cfg:
        gated = bool(cfg["gated_mlp"])
    elif model_type in _GATED_MODEL_TYPES:
        gated = True
    elif model_type in _PLAIN_MODEL_TYPES:
        gated = False
    else:
        gated = hidden_act in ("silu", "swiglu", "swish", "geglu")
    intermediate = _as_int(cfg, "intermediate_size", source, default=None)
    if not intermediate and model_type in _PLAIN_MODEL_TYPES:
        intermediate = 4 * hidden  # GPT-2's n_inner default

    if "norm_type" in cfg:
        norm = str(cfg["norm_type"]).lower()
    elif "rms_norm_eps" in cfg or model_type in _GATED_MODEL_TYPES:
        norm = "rmsnorm"
    else:
        norm = "layernorm"
    if norm not in ("rmsnorm", "layernorm"):
        raise InputError(source, "norm_type", f"must be rmsnorm or layernorm, got {norm!r}", "fix the value")

    position = str(cfg.get("position_embedding_type",
                           "learned" if model_type in _LEARNED_POSITION_TYPES else "rope")).lower()
    position = {"absolute": "learned", "rotary": "rope"}.get(position, position)
    if position not in ("rope", "learned", "alibi"):
        raise InputError(source, "position_embedding_type", f"must be rope, learned or alibi, got {position!r}",
                         "fix the value")
    linear_bias = bool(cfg.get("add_bias_linear", model_type in _BIAS_TYPES))
    qkv_bias = bool(cfg.get("add_qkv_bias", cfg.get("attention_bias", linear_bias or model_type in _QKV_BIAS_TYPES)))

    # --- mixture of experts ---
    experts = (_as_int(cfg, "num_local_experts", source) or _as_int(cfg, "n_routed_experts", source)
               or _as_int(cfg, "num_experts", source))
    top_k = _as_int(cfg, "num_experts_per_tok", source)
    moe_ffn = _as_int(cfg, "moe_intermediate_size", source) or (intermediate if experts else 0)
    shared_ffn = _as_int(cfg, "shared_expert_intermediate_size", source)
    if not shared_ffn and cfg.get("n_shared_experts"):
        shared_ffn = _as_int(cfg, "n_shared_experts", source) * moe_ffn
    moe_layers: tuple[bool, ...] = ()
    router_extra = 0
    if experts:
        first_dense = _as_int(cfg, "first_k_dense_replace", source)
        freq = _as_int(cfg, "moe_layer_freq", source, default=1) or 1
        step = _as_int(cfg, "decoder_sparse_step", source, default=1) or 1
        mlp_only = set(cfg.get("mlp_only_layers") or [])
        moe_layers = tuple(i >= first_dense and i % freq == 0 and (i + 1) % step == 0 and i not in mlp_only
                           for i in range(layers))
        if model_type in ("mixtral", "gpt_oss"):  # their intermediate_size is the expert's
            intermediate = 0 if all(moe_layers) else intermediate
        if model_type == "gpt_oss":
            router_extra = experts  # the router's bias (nn.Linear with bias)
        # DeepSeek-V3's e_score_correction_bias is a registered buffer in transformers, not a
        # parameter, so it is not counted (the published 671,026,404,352 excludes it).
        if model_type == "qwen2_moe" and shared_ffn:
            router_extra = hidden  # shared_expert_gate: h -> 1
    if experts and not top_k:
        raise InputError(source, "num_experts_per_tok", "is missing for a mixture-of-experts model",
                         "add 'num_experts_per_tok: <top-k>'")

    window, sliding_layers = _sliding_window(cfg, model_type, layers, source)

    extra = {k: v for k, v in cfg.items() if k not in _EXTENSION_FIELDS}
    if router_extra:
        extra["router_extra_params"] = router_extra
    try:
        return ModelSpec(
            name=str(name), num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
            num_kv_heads=kv_heads, head_dim=head_dim, ffn_hidden_size=intermediate or 0, vocab_size=vocab,
            tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), gated_mlp=gated, norm_type=norm,
            qkv_bias=qkv_bias, linear_bias=linear_bias, position_embedding_type=position,
            qk_norm=bool(cfg.get("qk_norm", model_type in _QK_NORM_TYPES)),
            attention_sinks=bool(cfg.get("attention_sinks", model_type == "gpt_oss")),
            sliding_window=window, sliding_window_layers=sliding_layers,
            max_position_embeddings=_as_int(cfg, "max_position_embeddings", source),
            num_experts=experts, experts_per_token=top_k if experts else 0, moe_ffn_hidden_size=moe_ffn if experts else 0,
            shared_expert_ffn_hidden_size=shared_ffn if experts else 0, moe_layers=moe_layers,
            q_lora_rank=_as_int(cfg, "q_lora_rank", source), kv_lora_rank=_as_int(cfg, "kv_lora_rank", source),
            qk_nope_head_dim=_as_int(cfg, "qk_nope_head_dim", source),
            qk_rope_head_dim=_as_int(cfg, "qk_rope_head_dim", source),
            v_head_dim=_as_int(cfg, "v_head_dim", source),
            mtp_layers=_as_int(cfg, "num_nextn_predict_layers", source), extra=extra,
        )
    except ValueError as exc:
        raise InputError(source, _field_of(str(exc), ""), str(exc), "fix the model fields") from None


def _sliding_window(cfg: dict[str, Any], model_type: str, layers: int, source: str) -> tuple[int, tuple[bool, ...]]:
    """The sliding window and the layers that use it, as Hugging Face configs spell them.

    ``layer_types`` (GPT-OSS, Gemma 2/3, newer Qwen2) names each layer; Mistral and Mixtral apply
    ``sliding_window`` to every layer; Qwen2 applies it from layer ``max_window_layers`` on when
    ``use_sliding_window`` is true.
    """
    window = _as_int(cfg, "sliding_window", source, default=None) or 0
    if not window:
        return 0, ()
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise InputError(source, "layer_types", f"must list one attention type per layer ({layers})",
                             "copy layer_types from the model's config.json")
        sliding = tuple(str(kind) == "sliding_attention" for kind in types)
    elif model_type in _ALL_LAYERS_SLIDING_TYPES:
        sliding = (True,) * layers
    elif cfg.get("use_sliding_window"):
        first = _as_int(cfg, "max_window_layers", source, default=0) or 0
        sliding = tuple(i >= first for i in range(layers))
    else:
        return 0, ()
    return (window, sliding) if any(sliding) else (0, ())
