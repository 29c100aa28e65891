"""The model architecture, in the field names of Hugging Face ``config.json``.

A :class:`ModelSpec` is everything about the network that memory, FLOPs and communication depend on:
dense or mixture-of-experts, GQA/MQA, multi-head latent attention (MLA, DeepSeek-V2/V3), gated (SwiGLU)
or plain MLP, LayerNorm or RMSNorm, tied or untied embeddings, learned or rotary positions.

It is built from a Hugging Face ``config.json`` as is (see :func:`cost_model.model_loader.model_from_hf`),
so a user can point the tool at the file that ships with the checkpoint. The dataclass style follows
torchtitan's job config: one documented field each, and ``__post_init__`` raises a clear ValueError
(:class:`hardware.bounds.OutOfBounds` for a size past the bounds that keep the search sane).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from hardware.bounds import check_bound

# Hugging Face config.json name of each bounded field (hardware.bounds keys them by the name users write).
_BOUNDED_FIELDS = {
    "num_layers": "num_hidden_layers", "hidden_size": "hidden_size", "num_attention_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "ffn_hidden_size": "intermediate_size",
    "vocab_size": "vocab_size", "num_experts": "num_experts", "moe_ffn_hidden_size": "moe_intermediate_size",
    "shared_expert_ffn_hidden_size": "shared_expert_intermediate_size", "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank", "qk_nope_head_dim": "qk_nope_head_dim", "qk_rope_head_dim": "qk_rope_head_dim",
    "v_head_dim": "v_head_dim", "mtp_layers": "num_nextn_predict_layers", "sliding_window": "sliding_window",
}


CHECKPOINT_WEIGHT_FORMATS = ("", "fp8", "fp8_block", "mxfp4", "nvfp4")
"""Quantized checkpoint weight formats (see ``ModelSpec.checkpoint_weight_format``)."""
CHECKPOINT_FORMAT_PRECISION = {"": "bf16", "fp8": "fp8", "fp8_block": "fp8", "mxfp4": "fp4", "nvfp4": "fp4"}
"""The serving weight precision (``cost_model.serving.plan.WEIGHT_PRECISIONS``) each checkpoint format is."""
QUANTIZABLE_PARTS = ("attention", "dense_mlp", "shared_experts", "experts")
"""Layer parts a checkpoint may store quantized: attention projections, dense MLPs, shared experts,
routed experts."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    """Display name, e.g. ``llama3-70b``."""

    num_layers: int
    """Decoder layers (HF ``num_hidden_layers``)."""

    hidden_size: int
    """Model width h (HF ``hidden_size``)."""

    num_attention_heads: int
    """Query heads a (HF ``num_attention_heads``)."""

    num_kv_heads: int
    """Key/value heads (HF ``num_key_value_heads``; equal to the query heads when absent; 1 = MQA)."""

    head_dim: int
    """Width of one attention head (HF ``head_dim``; hidden_size / heads when absent)."""

    ffn_hidden_size: int
    """Intermediate width of a dense MLP (HF ``intermediate_size``; Llama 4: ``intermediate_size_mlp``,
    whose ``intermediate_size`` is the expert's)."""

    vocab_size: int
    """Vocabulary size V before padding (HF ``vocab_size``)."""

    tie_embeddings: bool = False
    """Input embedding and LM head share one matrix (HF ``tie_word_embeddings``)."""

    gated_mlp: bool = True
    """SwiGLU/GeGLU MLP with three matrices (HF ``hidden_act`` silu/swiglu); False = GeLU MLP with two."""

    norm_type: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """RMSNorm has one weight vector; LayerNorm a weight and a bias."""

    norms_per_layer: int = 2
    """Norms over the hidden size in each decoder layer: 2 (before attention and before the MLP, Llama
    style); 4 for Gemma 2/3, which add ``post_attention_layernorm`` and ``post_feedforward_layernorm``
    around ``input_layernorm`` and ``pre_feedforward_layernorm`` (modeling_gemma2.py, modeling_gemma3.py)."""

    qkv_bias: bool = False
    """Bias on the Q, K and V projections (HF ``attention_bias``; Qwen2 has it)."""

    linear_bias: bool = False
    """Bias on every other linear layer, as GPT-2/3 and Megatron's ``--add-bias-linear``."""

    qk_norm: bool = False
    """RMSNorm over each query and key head before RoPE (Qwen3, Gemma 3: HF ``q_norm``/``k_norm`` of head_dim)."""

    attention_sinks: bool = False
    """One learned softmax sink logit per query head and layer (GPT-OSS ``sinks``)."""

    activation_clamp: float = 0.0
    """Clamp of the gated MLP's inputs before the activation (HF ``swiglu_limit``; GPT-OSS 7.0: the gate
    half clamped from above, the linear half to [-limit, limit], modeling_gpt_oss.py ``GptOssExperts``;
    Megatron-Core ``activation_func_clamp_value``). 0 = none."""

    sliding_window: int = 0
    """Keys a query sees in a sliding-window layer (HF ``sliding_window``); 0 = no sliding-window layers."""

    sliding_window_layers: tuple[bool, ...] = ()
    """For each layer, whether it uses the sliding window (HF ``layer_types`` entries
    ``sliding_attention``; every layer for Mistral/Mixtral; every other layer for Gemma 2; all but every
    ``sliding_window_pattern``-th layer for Gemma 3). Empty = none."""

    rope_scaling_type: str = ""
    """The rotary embedding's scaling (HF ``rope_scaling`` ``rope_type``, or ``type``): ``yarn`` (GPT-OSS,
    DeepSeek-V3), ``llama3``, ``linear``...; empty = none. Only YaRN changes what is priced: Megatron-Core
    runs it unfused (:attr:`cost_model.stacks.StackSpec.fused_yarn_rope`)."""

    position_embedding_type: Literal["rope", "learned", "alibi"] = "rope"
    """Rotary or ALiBi (no parameters), or a learned absolute position table (GPT)."""

    max_position_embeddings: int = 0
    """Rows of the learned position table (HF ``max_position_embeddings``); unused with RoPE."""

    # --- mixture of experts -------------------------------------------------------------------
    num_experts: int = 0
    """Routed experts per MoE layer (HF ``num_local_experts``/``n_routed_experts``/``num_experts``); 0 = dense."""

    experts_per_token: int = 0
    """Routed experts each token goes to, top-k (HF ``num_experts_per_tok``)."""

    moe_ffn_hidden_size: int = 0
    """Intermediate width of one routed expert (HF ``moe_intermediate_size``; Mixtral: ``intermediate_size``)."""

    shared_expert_ffn_hidden_size: int = 0
    """Total intermediate width of the shared experts of a MoE layer (DeepSeek ``n_shared_experts`` x
    ``moe_intermediate_size``; Qwen-MoE ``shared_expert_intermediate_size``; Llama 4: one shared expert
    of ``intermediate_size``)."""

    moe_layers: tuple[bool, ...] = ()
    """For each layer, whether its MLP is a MoE block (derived from ``first_k_dense_replace``,
    ``moe_layer_freq``, ``decoder_sparse_step``, ``mlp_only_layers``; Llama 4's
    ``interleave_moe_layer_step`` or its list of indices ``moe_layers``). Empty = no MoE layers."""

    # --- multi-head latent attention (DeepSeek-V2/V3) -----------------------------------------
    q_lora_rank: int = 0
    """Rank of the low-rank query projection (0 = full-rank query projection)."""

    kv_lora_rank: int = 0
    """Rank of the compressed KV latent; non-zero turns on MLA."""

    qk_nope_head_dim: int = 0
    """Per-head query/key width without rotary embedding (MLA)."""

    qk_rope_head_dim: int = 0
    """Per-head query/key width carrying the rotary embedding (MLA)."""

    v_head_dim: int = 0
    """Per-head value width (MLA)."""

    mtp_layers: int = 0
    """Multi-token-prediction modules (DeepSeek-V3 ``num_nextn_predict_layers``); counted separately."""

    # --- checkpoint quantization (HF ``quantization_config``) ----------------------------------
    checkpoint_weight_format: str = ""
    """Storage format of the checkpoint's quantized weights (:data:`CHECKPOINT_WEIGHT_FORMATS`): ``fp8``
    (E4M3, per-tensor or per-channel scales), ``fp8_block`` (E4M3 with an fp32 scale per 128 x 128 block,
    DeepSeek-V3/R1), ``mxfp4`` (E2M1 with an E8M0 scale per 32, GPT-OSS), ``nvfp4`` (E2M1 with an E4M3 scale
    per 16, ModelOpt / compressed-tensors); empty = unquantized (BF16/FP16)."""

    checkpoint_quantized_parts: tuple[str, ...] = ()
    """Parts of each layer stored in ``checkpoint_weight_format`` (:data:`QUANTIZABLE_PARTS`); the others
    stay BF16 (HF ``modules_to_not_convert`` / ``ignore`` / ``exclude_modules``). Embeddings, the LM head,
    norms and routers are never quantized here."""

    extra: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    """Unused fields of the source config, kept for reference."""

    def __post_init__(self) -> None:
        positive = {
            "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads, "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "vocab_size": self.vocab_size,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, hf_name in _BOUNDED_FIELDS.items():
            # The bounds of hardware.bounds: far past any real model, they keep sizes and byte counts sane.
            check_bound(hf_name, getattr(self, name))
        if self.position_embedding_type == "learned":
            check_bound("max_position_embeddings", self.max_position_embeddings)
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_kv_heads})")
        if not isinstance(self.norms_per_layer, int) or isinstance(self.norms_per_layer, bool) or \
                not 0 <= self.norms_per_layer <= 8:
            raise ValueError(f"norms_per_layer must be a whole number in 0..8, got {self.norms_per_layer!r}")
        if self.ffn_hidden_size <= 0 and not all(self.moe_layers or [False]):
            raise ValueError("intermediate_size must be positive for a model with dense MLP layers")
        if self.moe_layers and len(self.moe_layers) != self.num_layers:
            raise ValueError("moe_layers must have one entry per layer")
        if self.sliding_window_layers and len(self.sliding_window_layers) != self.num_layers:
            raise ValueError("layer_types must have one entry per layer")
        if self.sliding_window < 0 or (any(self.sliding_window_layers) and self.sliding_window == 0):
            raise ValueError(f"sliding_window must be a positive number of tokens, got {self.sliding_window!r}")
        if any(self.moe_layers):
            if self.num_experts <= 0 or self.moe_ffn_hidden_size <= 0:
                raise ValueError("a MoE model needs num_experts and moe_intermediate_size > 0")
            if not 0 < self.experts_per_token <= self.num_experts:
                raise ValueError(f"num_experts_per_tok must be in 1..{self.num_experts}, "
                                 f"got {self.experts_per_token}")
        if self.kv_lora_rank and not (self.qk_rope_head_dim and self.v_head_dim):
            raise ValueError("MLA (kv_lora_rank > 0) needs qk_rope_head_dim and v_head_dim")
        if self.position_embedding_type == "learned" and self.max_position_embeddings <= 0:
            raise ValueError("a learned position table needs max_position_embeddings > 0")
        if self.checkpoint_weight_format not in CHECKPOINT_WEIGHT_FORMATS:
            raise ValueError(f"checkpoint_weight_format must be one of {', '.join(repr(f) for f in CHECKPOINT_WEIGHT_FORMATS)}, "
                             f"got {self.checkpoint_weight_format!r}")
        unknown = [part for part in self.checkpoint_quantized_parts if part not in QUANTIZABLE_PARTS]
        if unknown:
            raise ValueError(f"checkpoint_quantized_parts must name parts among {', '.join(QUANTIZABLE_PARTS)}, "
                             f"got {unknown[0]!r}")

    # --- derived shape facts used throughout the cost model ------------------------------------
    @property
    def is_moe(self) -> bool:
        return any(self.moe_layers)

    @property
    def checkpoint_precision(self) -> str:
        """The weight precision the checkpoint ships in: bf16, fp8 or fp4."""
        return CHECKPOINT_FORMAT_PRECISION[self.checkpoint_weight_format]

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @cached_property
    def num_moe_layers(self) -> int:
        return sum(self.moe_layers)

    @cached_property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @cached_property
    def num_sliding_window_layers(self) -> int:
        return sum(self.sliding_window_layers) if self.sliding_window else 0

    def attended_share(self, seq_length: int, causal: bool) -> float:
        """Query-key pairs the model's layers score, as a share of what full-sequence attention scores.

        A full layer scores s^2 pairs (s^2/2 causal); a sliding-window layer of width w = min(w, s)
        scores s*w (each query sees w keys), or s*w - w^2/2 causal (the first w queries see fewer;
        the continuous form, which gives s^2/2 at w = s like the full count). Averaged over layers,
        since the cost model prices one attention core per layer kind.
        """
        sliding = self.num_sliding_window_layers
        if not sliding:
            return 1.0
        s = float(seq_length)
        w = min(float(self.sliding_window), s)
        share = (s * w - w * w / 2) / (s * s / 2) if causal else w / s
        return (self.num_layers - sliding + sliding * share) / self.num_layers

    @property
    def q_head_dim(self) -> int:
        """Width of one query/key head as multiplied in QK^T."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def v_dim(self) -> int:
        """Width of one value head (= head_dim except for MLA)."""
        return self.v_head_dim if self.is_mla else self.head_dim

    @property
    def attention_output_width(self) -> int:
        """Input width of the attention output projection: heads x value head width."""
        return self.num_attention_heads * self.v_dim

    @property
    def norm_params(self) -> int:
        """Parameters of one normalisation layer over the hidden size."""
        return self.hidden_size * (2 if self.norm_type == "layernorm" else 1)
