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
A multimodal checkpoint (Gemma 3, Llama 4) nests its language model under ``text_config``: that part is
read (with the outer ``tie_word_embeddings``) and the vision tower is left out, with a warning saying
so. Fields a shipped file leaves to its transformers config class are filled with that class's
defaults (Gemma 3's ``text_config`` gives no ``vocab_size``: 262,208). Model-type conventions:

* Gemma (``hidden_activation``, GeGLU: a gated MLP); Gemma 2/3 have four norms per layer, Gemma 3 also
  q/k norms; Gemma 2 alternates sliding-window and global layers (even layers slide), Gemma 3 slides on
  all but every ``sliding_window_pattern``-th layer (default 6) unless ``layer_types`` lists them.
* Llama 4: ``interleave_moe_layer_step`` (MoE where (i + 1) % step == 0) or the index list
  ``moe_layers``; ``intermediate_size_mlp`` is the dense MLP, ``intermediate_size`` the routed expert and
  the one shared expert of each MoE layer; its q/k norm has no weights.

A quantized checkpoint's ``quantization_config`` (FP8, block FP8, MXFP4, NVFP4; ModelOpt and
compressed-tensors included) sets the weight format and the layer parts stored in it
(:mod:`cost_model.checkpoint_quantization`), which the serving model's weight bytes follow.

Fields that change the real model but not what plan-search prices (``rope_scaling``,
``attention_chunk_size``, logit soft-capping, ...) draw one warning naming the file and the fields;
metadata (``architectures``, ``torch_dtype``, token ids, ...) is read silently.
HF semantics are kept: a missing ``num_key_value_heads`` means one KV head per query head, a missing
``tie_word_embeddings`` means tied (``PretrainedConfig``'s default). A field that is given is held to
what it says: ``num_key_value_heads: 0`` or ``head_dim: 0`` is an error, not "absent"; switches such as
``tie_word_embeddings`` must be ``true`` or ``false`` (the string ``"false"`` is refused, not read as
true); every count and width is a whole number within the bounds of :mod:`hardware.bounds`; and the
shape obeys the architecture's divisibility rules (Megatron-LM's ``validate_args``): without
``head_dim``, ``hidden_size`` must divide evenly into ``num_attention_heads`` heads, and the query
heads into ``num_key_value_heads`` groups.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from hardware.bounds import MAX_MODEL_PARAMETERS, OutOfBounds, check_number, fmt, shown
from hardware.errors import InputError, did_you_mean, read_yaml_mapping
from hardware.yaml_input import load_yaml_text, names_existing_file

from .checkpoint_quantization import checkpoint_quantization
from .host import graph_scope_conflict
from .model_spec import ModelSpec
from .params import ParameterCounts
from .stacks import DEFAULT_STACK, stack_spec
from .training_spec import TRAINING_FIELDS, TrainingSpec

# model_type values whose MLP is gated (three matrices) whatever hidden_act says (Gemma's GeGLU).
_GATED_MODEL_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                      "deepseek_v2", "deepseek_v3", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "olmo",
                      "olmo2", "llama4", "llama4_text"}
# Gemma 2/3 decoder layers: input, post-attention, pre-feedforward and post-feedforward RMSNorms.
_FOUR_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}
_LLAMA4_TYPES = {"llama4", "llama4_text"}
# The language model's model_type inside a multimodal config whose text_config does not say it.
_TEXT_MODEL_TYPES = {"gemma3": "gemma3_text", "llama4": "llama4_text"}
# Parts of a multimodal checkpoint that are not the language model: named in a warning, not priced.
_TOWER_FIELDS = ("vision_config", "audio_config")

# Defaults of the transformers config classes (configuration_gemma2.py, configuration_gemma3.py,
# configuration_llama4.py) for the fields the shipped config.json files leave out: gemma-3-27b-it's
# text_config gives neither vocab_size nor sliding_window_pattern.
_MODEL_TYPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": {"head_dim": 256, "sliding_window": 4096, "hidden_activation": "gelu_pytorch_tanh"},
    "gemma3_text": {"vocab_size": 262_208, "head_dim": 256, "sliding_window": 4096, "sliding_window_pattern": 6,
                    "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6},
    "llama4_text": {"tie_word_embeddings": False, "interleave_moe_layer_step": 1, "rms_norm_eps": 1e-5},
}
_MODEL_TYPE_DEFAULTS["gemma3"] = _MODEL_TYPE_DEFAULTS["gemma3_text"]
_MODEL_TYPE_DEFAULTS["llama4"] = _MODEL_TYPE_DEFAULTS["llama4_text"]

# Fields that change the real model but not its parameters or anything plan-search prices: read, and
# named in one warning when they say something (not null, false or empty).
_UNPRICED_FIELDS = {
    "rope_scaling", "rope_parameters", "attention_chunk_size", "no_rope_layers", "no_rope_layer_interval",
    "final_logit_softcapping", "attn_logit_softcapping", "query_pre_attn_scalar", "use_qk_norm",
    "attn_temperature_tuning", "floor_scale", "attn_scale", "rope_local_base_freq",
    "partial_rotary_factor", "router_jitter_noise", "logits_scaling", "embedding_multiplier",
}
# use_qk_norm: Llama 4's q/k norm is an L2 norm without weights; the rest change numerics or positions.
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
        raise InputError("model", "preset", f"unknown model preset {name!r}{did_you_mean(name, table)}",
                         f"use one of: {', '.join(sorted(table))}, or a model.yaml/config.json path")
    return dict(table[name])


_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def load_model(source: str | Path) -> ModelInput:
    """Load a model from a file path or a preset name.

    A name with a file suffix or a directory separator, or naming an existing file, is read as a file
    (as cluster names are, :func:`hardware.loader.load_cluster`); anything else is a preset
    name. An empty name is refused here, since ``Path('')`` is the current directory."""
    text = str(source)
    if not isinstance(source, Path) and not text.strip():
        raise InputError("model", "", "the model name is empty",
                         "give a preset name (plan-search models lists them) or a model.yaml / config.json path")
    if (isinstance(source, Path) or text.lower().endswith(_FILE_SUFFIXES) or "/" in text or "\\" in text
            or names_existing_file(text)):
        path = Path(source)
        config = read_yaml_mapping(path)
        return model_input_from_mapping(config, source=text, default_name=path.stem)
    return model_input_from_mapping({"preset": text}, source="model", default_name=text)


def model_input_from_mapping(config: dict[str, Any], source: str = "model",
                             default_name: str = "model") -> ModelInput:
    """Build a :class:`ModelInput` from a parsed model.yaml / config.json mapping."""
    config = dict(config)
    training = config.pop("training", None) or {}
    if not isinstance(training, dict):
        raise InputError(source, "training", "must be a mapping of training settings",
                         "write e.g. 'training: {seq_length: 8192, global_batch_size: 1024}'")
    if "moe_capacity_factor" in config:
        # A training setting that older model files gave at the top level: honoured (and checked) as the
        # training section's, never dropped in silence; both places at once would leave one unused.
        if "moe_capacity_factor" in training:
            raise InputError(source, "moe_capacity_factor", "is given both at the top level and under training:",
                             "keep the one under training:")
        training = {**training, "moe_capacity_factor": config.pop("moe_capacity_factor")}
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
    """Check the names in a ``training:`` section; turn ``global_batch_tokens`` into sequences later.

    ``global_batch_size`` and ``global_batch_tokens`` say the same thing two ways: a section giving both
    is refused rather than one silently winning."""
    allowed = set(TRAINING_FIELDS) | {"global_batch_tokens"}
    for key in training:
        if key not in allowed:
            raise InputError(source, f"training.{key}", f"unknown training setting{did_you_mean(str(key), allowed)}",
                             f"known settings: {', '.join(sorted(allowed))}")
    if "global_batch_size" in training and "global_batch_tokens" in training:
        raise InputError(source, "training.global_batch_tokens", "is given together with global_batch_size, and "
                         "both set the batch", "keep one: global_batch_size (sequences) or global_batch_tokens (tokens)")
    return dict(training)


BATCH_FIELDS = ("global_batch_size", "global_batch_tokens")
"""The two ways to give the global batch (sequences or tokens): each layer of settings gives at most one."""


def layered_training(*layers: dict[str, Any]) -> dict[str, Any]:
    """Training settings from several layers (model file, then sweep or study, then axis values or flags),
    later layers winning. A layer that gives one batch field replaces the other one of the layers below
    it, so the batch a user wrote last is the one priced; never both, where one would silently win."""
    merged: dict[str, Any] = {}
    for layer in layers:
        given = [key for key in BATCH_FIELDS if key in layer]
        if given:
            for key in BATCH_FIELDS:
                merged.pop(key, None)
        merged.update(layer)
    return merged


def build_training(overrides: dict[str, Any], source: str = "training", model: ModelSpec | None = None) -> TrainingSpec:
    """Make a :class:`TrainingSpec` from defaults plus overrides, resolving ``global_batch_tokens``;
    given the ``model``, also check the settings that depend on it (CUDA graphs of MoE layers).

    When a merge of several layers (model file, sweep, command line) leaves both batch settings, the
    sequences win; a single section giving both is refused earlier, by :func:`training_overrides`."""
    values = {key: _coerce_number(key, value, source) for key, value in overrides.items()}
    tokens = values.pop("global_batch_tokens", None)
    values = {**_stack_defaults(values.get("stack", DEFAULT_STACK), source), **values}
    try:
        base = TrainingSpec(**{k: v for k, v in values.items() if k != "global_batch_size"},
                            global_batch_size=values.get("global_batch_size", TrainingSpec.global_batch_size))
        if tokens is not None and "global_batch_size" not in values:
            tokens = check_number("global_batch_tokens", tokens, integer=True, minimum=1)
            if tokens % base.seq_length:
                raise InputError(source, "training.global_batch_tokens",
                                 f"{fmt(tokens)} is not a positive multiple of seq_length {base.seq_length}",
                                 "give a token count that is a whole number of sequences, or global_batch_size")
            base = base.with_changes(global_batch_size=tokens // base.seq_length)
    except OutOfBounds as exc:
        raise InputError(source, f"training.{exc.field}", str(exc), exc.fix) from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(source, _field_of(str(exc), "training"), str(exc), "fix the training setting") from None
    conflict = graph_scope_conflict(model, base) if model is not None else None
    if conflict:
        raise InputError(source, "training.cuda_graph_scope", conflict,
                         "set training.moe_pad_to_capacity: true (drop and pad) or moe_rank_capacity_factor with "
                         "moe_paged_stash_factor (sync-free HybridEP), or capture at most [attn, moe_router, moe_preprocess]")
    return base


STACK_DEFAULTED = ("flash_attention", "fused_cross_entropy", "overlap_grad_reduce")
"""Training settings whose default is the stack's (:class:`cost_model.stacks.StackSpec`)."""


def _stack_defaults(name: Any, source: str) -> dict[str, Any]:
    """The settings of :data:`STACK_DEFAULTED` as the stack ``name`` runs them."""
    try:
        spec = stack_spec(name)
    except (TypeError, ValueError) as exc:
        raise InputError(source, "training.stack", str(exc), "name one of the stacks plan-search prices") from None
    return {setting: getattr(spec, setting) for setting in STACK_DEFAULTED}


_INT_SETTINGS = {"seq_length", "global_batch_size", "global_batch_tokens"}
_FLOAT_SETTINGS = {"train_tokens", "moe_capacity_factor", "moe_rank_capacity_factor", "moe_paged_stash_factor"}


def _coerce_number(key: str, value: Any, source: str) -> Any:
    """YAML 1.1 reads ``1.0e12`` (no sign in the exponent) as a string: accept it as the number it is.
    A whole float (``4.194304e+6``) is the whole number it spells for the settings that count things.
    Everything else is left for :class:`TrainingSpec` to check (booleans, infinities, bounds)."""
    if key not in _INT_SETTINGS | _FLOAT_SETTINGS:
        return value
    if isinstance(value, str):
        try:
            value = float(value.replace("_", ""))
        except ValueError:
            raise InputError(source, f"training.{key}", f"must be a number, got {value!r}",
                             "write e.g. 15.0e+12") from None
    if key in _INT_SETTINGS and isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    return value


def _field_of(message: str, prefix: str) -> str:
    """The field a validation message starts with ('seq_length must be ...'), else just the prefix."""
    from dataclasses import fields as dataclass_fields
    word = message.split(" ", 1)[0]
    known = set(TRAINING_FIELDS) | {f.name for f in dataclass_fields(ModelSpec)} | {
        "num_attention_heads", "num_key_value_heads", "intermediate_size", "num_experts_per_tok", "kv_lora_rank"}
    if word in known:
        return f"{prefix}.{word}" if prefix else word
    return prefix


def _whole(config: dict[str, Any], key: str, source: str, *, minimum: int = 0, required: bool = False) -> int | None:
    """The whole number ``config[key]``, at least ``minimum`` and within its bound; None when absent.

    Absent means not in the file or ``null`` (Hugging Face writes ``"q_lora_rank": null``). A value
    that is given is held to what it says: ``0`` where at least 1 is needed is an error, never "absent".
    """
    value = config.get(key)
    if value is None:
        if required:
            raise InputError(source, key, "is missing", f"add '{key}: <integer>' (Hugging Face config.json name)")
        return None
    try:
        return int(check_number(key, value, integer=True, minimum=minimum))
    except OutOfBounds as exc:
        fix = exc.fix if exc.fix != "fix the value" else (
            f"give at least {minimum}, or leave {key} out" if not required else f"give at least {minimum}")
        raise InputError(source, key, exc.problem, fix) from None


def _clamp(config: dict[str, Any], source: str) -> float:
    """The gated MLP's input clamp, HF ``swiglu_limit`` (GPT-OSS: 7.0); 0 when absent or null."""
    value = config.get("swiglu_limit")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise InputError(source, "swiglu_limit", f"must be a positive number, got {value!r}",
                         "give the clamp limit (GPT-OSS: 7.0) or leave swiglu_limit out")
    return float(value)


def _rope_scaling_type(config: dict[str, Any]) -> str:
    """HF ``rope_scaling``'s ``rope_type`` (older configs: ``type``), lower case; empty when absent."""
    scaling = config.get("rope_scaling")
    if not isinstance(scaling, dict):
        return ""
    return str(scaling.get("rope_type") or scaling.get("type") or "").lower()


def _flag(config: dict[str, Any], key: str, default: bool, source: str) -> bool:
    """A switch: YAML/JSON true or false only (``bool("false")`` is True, so strings are refused);
    absent or null takes the default."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InputError(source, key, f"must be true or false, got {shown(value)}",
                         f"write {key}: true or {key}: false, without quotes")
    return value


def _layer_indices(config: dict[str, Any], key: str, layers: int, source: str) -> set[int]:
    """A list of layer indices (``mlp_only_layers``), each in 0..layers-1."""
    value = config.get(key)
    if value is None:
        return set()
    if not isinstance(value, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in value):
        raise InputError(source, key, f"must be a list of layer indices, got {shown(value)}",
                         f"write e.g. {key}: [0, 1] (layers count from 0)")
    outside = sorted(i for i in value if not 0 <= i < layers)
    if outside:
        raise InputError(source, key, f"names layer {outside[0]}, but the model's layers are 0..{layers - 1}",
                         "list only layers that exist (they count from 0)")
    return set(value)


def _head_dim(cfg: dict[str, Any], hidden: int, heads: int, source: str) -> int:
    """``head_dim`` as given, or hidden_size / num_attention_heads when it divides evenly.

    Megatron-LM derives kv_channels the same way and refuses a hidden size that the heads do not
    divide (``validate_args``: hidden_size % num_attention_heads == 0 unless kv_channels is given);
    rounding down would price a narrower attention than the file describes."""
    given = _whole(cfg, "head_dim", source, minimum=1)
    if given is not None:
        return given
    if hidden % heads:
        raise InputError(source, "num_attention_heads",
                         f"{heads} heads do not divide hidden_size {hidden} (head_dim would be {hidden / heads:.2f}) "
                         "and the file gives no head_dim",
                         f"set head_dim explicitly, or use a head count that divides {hidden}")
    return hidden // heads


def _kv_heads(cfg: dict[str, Any], heads: int, source: str) -> int:
    """``num_key_value_heads`` (absent: one per query head, HF's default), dividing the query heads:
    grouped-query attention shares each KV head among an equal group of query heads."""
    kv_heads = _whole(cfg, "num_key_value_heads", source, minimum=1)
    if kv_heads is None:
        return heads
    if heads % kv_heads:
        raise InputError(source, "num_key_value_heads",
                         f"{kv_heads} KV heads do not divide num_attention_heads {heads} into equal groups",
                         f"use a divisor of {heads} (1 = multi-query, {heads} = multi-head)")
    return kv_heads


def model_from_hf(config: dict[str, Any], source: str = "model", name: str = "model") -> ModelSpec:
    """Map Hugging Face ``config.json`` fields (plus plan-search extensions) onto a :class:`ModelSpec`."""
    cfg = _language_model_config(dict(config), source)
    for old, new in _ALIASES.items():
        if old in cfg and new not in cfg:
            cfg[new] = cfg.pop(old)
    model_type = str(cfg.get("model_type", "")).lower()
    for key, value in _MODEL_TYPE_DEFAULTS.get(model_type, {}).items():
        if cfg.get(key) is None:
            cfg[key] = value
    _warn_unpriced(cfg, source)

    layers = _whole(cfg, "num_hidden_layers", source, minimum=1, required=True)
    hidden = _whole(cfg, "hidden_size", source, minimum=1, required=True)
    heads = _whole(cfg, "num_attention_heads", source, minimum=1, required=True)
    kv_heads = _kv_heads(cfg, heads, source)
    head_dim = _head_dim(cfg, hidden, heads, source)
    vocab = _whole(cfg, "vocab_size", source, minimum=1, required=True)

    hidden_act = str(cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu").lower()
    if model_type in _GATED_MODEL_TYPES:
        gated_default = True
    elif model_type in _PLAIN_MODEL_TYPES:
        gated_default = False
    else:
        # hidden_activation is Gemma's name, and every Gemma MLP is gated (GeGLU, modeling_gemma.py).
        gated_default = hidden_act in ("silu", "swiglu", "swish", "geglu") or cfg.get("hidden_activation") is not None
    gated = _flag(cfg, "gated_mlp", gated_default, source)
    intermediate = _whole(cfg, "intermediate_size", source) or 0
    if not intermediate and model_type in _PLAIN_MODEL_TYPES:
        intermediate = 4 * hidden  # GPT-2's n_inner default
    # Llama 4: intermediate_size_mlp is the dense layers' MLP, intermediate_size the expert's.
    dense_mlp = _whole(cfg, "intermediate_size_mlp", source, minimum=1)

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
    linear_bias = _flag(cfg, "add_bias_linear", model_type in _BIAS_TYPES, source)
    qkv_default = _flag(cfg, "attention_bias", linear_bias or model_type in _QKV_BIAS_TYPES, source)
    qkv_bias = _flag(cfg, "add_qkv_bias", qkv_default, source)

    # --- mixture of experts ---
    experts = (_whole(cfg, "num_local_experts", source) or _whole(cfg, "n_routed_experts", source)
               or _whole(cfg, "num_experts", source) or 0)
    top_k = _whole(cfg, "num_experts_per_tok", source) or 0
    moe_ffn = _whole(cfg, "moe_intermediate_size", source) or (intermediate if experts else 0)
    shared_ffn = _whole(cfg, "shared_expert_intermediate_size", source) or 0
    if not shared_ffn:
        shared_ffn = (_whole(cfg, "n_shared_experts", source) or 0) * moe_ffn
    if not shared_ffn and model_type in _LLAMA4_TYPES:
        shared_ffn = moe_ffn  # one shared expert as wide as a routed one (Llama4TextMoe.shared_expert)
    moe_layers: tuple[bool, ...] = ()
    router_extra = 0
    if experts:
        moe_layers = _moe_layer_pattern(cfg, layers, source)
        if model_type in ("mixtral", "gpt_oss"):  # their intermediate_size is the expert's
            intermediate = 0 if all(moe_layers) else intermediate
        if model_type == "gpt_oss":
            router_extra = experts  # the router's bias (nn.Linear with bias)
        # DeepSeek-V3's e_score_correction_bias is a registered buffer in transformers, not a
        # parameter, so it is not counted (the published 671,026,404,352 excludes it).
        if model_type == "qwen2_moe" and shared_ffn:
            router_extra = hidden  # shared_expert_gate: h -> 1
    if experts and not top_k:
        raise InputError(source, "num_experts_per_tok", "is missing (or 0) for a mixture-of-experts model",
                         "add 'num_experts_per_tok: <top-k>', at least 1")

    if dense_mlp is not None:
        intermediate = dense_mlp
    window, sliding_layers = _sliding_window(cfg, model_type, layers, source)
    max_positions = _whole(cfg, "max_position_embeddings", source) if position == "learned" else (
        _whole_unbounded(cfg, "max_position_embeddings", source))

    weight_format, quantized_parts = checkpoint_quantization(cfg.get("quantization_config"), source)
    extra = {k: v for k, v in cfg.items() if k not in _EXTENSION_FIELDS}
    if router_extra:
        extra["router_extra_params"] = router_extra
    try:
        spec = ModelSpec(
            name=str(name), num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
            num_kv_heads=kv_heads, head_dim=head_dim, ffn_hidden_size=intermediate or 0, vocab_size=vocab,
            tie_embeddings=_flag(cfg, "tie_word_embeddings", True, source), gated_mlp=gated, norm_type=norm,
            norms_per_layer=4 if model_type in _FOUR_NORM_TYPES else 2,
            qkv_bias=qkv_bias, linear_bias=linear_bias, position_embedding_type=position,
            qk_norm=_flag(cfg, "qk_norm", model_type in _QK_NORM_TYPES, source),
            attention_sinks=_flag(cfg, "attention_sinks", model_type == "gpt_oss", source),
            activation_clamp=_clamp(cfg, source), rope_scaling_type=_rope_scaling_type(cfg),
            sliding_window=window, sliding_window_layers=sliding_layers,
            max_position_embeddings=max_positions or 0,
            num_experts=experts, experts_per_token=top_k if experts else 0, moe_ffn_hidden_size=moe_ffn if experts else 0,
            shared_expert_ffn_hidden_size=shared_ffn if experts else 0, moe_layers=moe_layers,
            q_lora_rank=_whole(cfg, "q_lora_rank", source) or 0, kv_lora_rank=_whole(cfg, "kv_lora_rank", source) or 0,
            qk_nope_head_dim=_whole(cfg, "qk_nope_head_dim", source) or 0,
            qk_rope_head_dim=_whole(cfg, "qk_rope_head_dim", source) or 0,
            v_head_dim=_whole(cfg, "v_head_dim", source) or 0,
            mtp_layers=_whole(cfg, "num_nextn_predict_layers", source) or 0,
            checkpoint_weight_format=weight_format, checkpoint_quantized_parts=quantized_parts, extra=extra,
        )
    except OutOfBounds as exc:
        raise InputError(source, exc.field, exc.problem, exc.fix) from None
    except InputError:
        raise  # a field reader's own one-line message (an InputError is a ValueError: not wrapped twice)
    except ValueError as exc:
        raise InputError(source, _field_of(str(exc), ""), str(exc), "fix the model fields") from None
    _check_size(spec, source)
    return spec


def _whole_unbounded(cfg: dict[str, Any], key: str, source: str) -> int | None:
    """A whole number that the model does not use (max_position_embeddings under RoPE): checked to be
    a finite whole number, not bounded (some configs write 2^31-1 to mean "no limit")."""
    value = cfg.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise InputError(source, key, f"must be a whole number, got {shown(value)}", "fix the value or leave it out")
    return int(value)


def _check_size(spec: ModelSpec, source: str) -> None:
    """Refuse a model past MAX_MODEL_PARAMETERS: each width may be within its bound while their product
    is not, and memory in bytes must stay inside 64-bit integers."""
    total = ParameterCounts(spec).total
    if total > MAX_MODEL_PARAMETERS:
        raise InputError(source, "", f"describes {total:.3g} parameters, past the bound of {MAX_MODEL_PARAMETERS:.0e} "
                         "that plan-search accepts (the largest models have ~2x10^12)",
                         "check num_hidden_layers, hidden_size, intermediate_size and the expert counts")


def _sliding_window(cfg: dict[str, Any], model_type: str, layers: int, source: str) -> tuple[int, tuple[bool, ...]]:
    """The sliding window and the layers that use it, as Hugging Face configs spell them.

    ``layer_types`` (GPT-OSS, Gemma 2/3, newer Qwen2) names each layer; Mistral and Mixtral apply
    ``sliding_window`` to every layer; Qwen2 applies it from layer ``max_window_layers`` on when
    ``use_sliding_window`` is true. Without ``layer_types``, Gemma 2 slides on the even layers
    (``is_sliding = not layer_idx % 2``) and Gemma 3 (or any file giving ``sliding_window_pattern`` P)
    on every layer but each P-th (``(layer_idx + 1) % P != 0``: P = 6 is five local, one global).
    """
    window = _whole(cfg, "sliding_window", source) or 0
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
    elif cfg.get("sliding_window_pattern") is not None:
        pattern = _whole(cfg, "sliding_window_pattern", source, minimum=1)
        sliding = tuple((i + 1) % pattern != 0 for i in range(layers))
    elif model_type == "gemma2":
        sliding = tuple(i % 2 == 0 for i in range(layers))
    elif _flag(cfg, "use_sliding_window", False, source):
        first = _whole(cfg, "max_window_layers", source) or 0
        sliding = tuple(i >= first for i in range(layers))
    else:
        return 0, ()
    return (window, sliding) if any(sliding) else (0, ())


def _language_model_config(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """The language model's fields: ``text_config`` of a multimodal config.json, else the file itself.

    Gemma 3 and Llama 4 checkpoints nest the language model under ``text_config`` and keep
    ``tie_word_embeddings`` (and the ``model_type`` of the whole, ``gemma3``/``llama4``) outside it;
    plan-search extension fields given beside ``text_config`` apply to it too. A vision or audio tower
    is not priced, and a warning says so."""
    text = cfg.get("text_config")
    if text is None:
        return cfg
    if not isinstance(text, dict):
        raise InputError(source, "text_config", f"must be a mapping of the language model's fields, got {shown(text)}",
                         "copy text_config from the model's config.json")
    towers = [key for key in _TOWER_FIELDS if cfg.get(key)]
    if towers:
        warnings.warn(f"{source}: {' and '.join(towers)} not priced: only the language model (text_config) is "
                      "counted", UserWarning, stacklevel=4)
    merged = dict(text)
    for key in ("tie_word_embeddings", "quantization_config", *_EXTENSION_FIELDS):
        if key in cfg and key not in merged:
            merged[key] = cfg[key]
    outer_type = str(cfg.get("model_type") or "").lower()
    if merged.get("model_type") is None and outer_type:
        merged["model_type"] = _TEXT_MODEL_TYPES.get(outer_type, outer_type)
    return merged


def _moe_layer_pattern(cfg: dict[str, Any], layers: int, source: str) -> tuple[bool, ...]:
    """Which layers are MoE blocks, from whichever convention the file uses.

    Llama 4 lists them (``moe_layers``, indices) or interleaves them (``interleave_moe_layer_step`` s:
    layers s-1, 2s-1, ..., as ``range(s - 1, layers, s)`` in configuration_llama4.py); DeepSeek keeps
    the first ``first_k_dense_replace`` dense and then every ``moe_layer_freq``-th; Qwen-MoE every
    ``decoder_sparse_step``-th (counting from 1) except ``mlp_only_layers``."""
    listed = cfg.get("moe_layers")
    if listed is not None:
        indices = _layer_indices(cfg, "moe_layers", layers, source)
        return tuple(i in indices for i in range(layers))
    first_dense = _whole(cfg, "first_k_dense_replace", source) or 0
    freq = _whole(cfg, "moe_layer_freq", source, minimum=1) or 1
    step = _whole(cfg, "decoder_sparse_step", source, minimum=1) or 1
    interleave = _whole(cfg, "interleave_moe_layer_step", source, minimum=1) or 1
    mlp_only = _layer_indices(cfg, "mlp_only_layers", layers, source)
    return tuple(i >= first_dense and i % freq == 0 and (i + 1) % step == 0 and (i + 1) % interleave == 0
                 and i not in mlp_only for i in range(layers))


def _warn_unpriced(cfg: dict[str, Any], source: str) -> None:
    """One warning naming the fields that are read but change nothing plan-search prices (a null,
    false or empty value says nothing and draws no warning)."""
    given = sorted(key for key in _UNPRICED_FIELDS if cfg.get(key) not in (None, False, [], {}, 0)
                   and not (key == "rope_scaling" and _rope_scaling_type(cfg) == "yarn"))  # YaRN is priced
    if given:
        warnings.warn(f"{source}: read but not priced (no effect on parameters, memory or time in plan-search): "
                      f"{', '.join(given)}", UserWarning, stacklevel=4)
