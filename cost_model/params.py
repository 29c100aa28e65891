"""Parameter counts of a :class:`ModelSpec`, by component.

Counted matrix by matrix from the Hugging Face implementations (``modeling_llama.py``,
``modeling_mixtral.py``, ``modeling_qwen2.py``, ``modeling_deepseek_v3.py``, ``modeling_gemma2.py``,
``modeling_gemma3.py``, ``modeling_llama4.py``, GPT-2 style for learned positions and biases), so that
the totals equal what ``sum(p.numel() for p in model.parameters())`` prints for the language model.
Tests check the published totals of Llama 3 8B/70B/405B, Mixtral 8x7B, Qwen2.5-7B and DeepSeek-V3
(REFERENCE.md gives the exact figures), and of Gemma 2, Gemma 3 and Llama 4 Scout/Maverick from their
shipped config.json files (tests/test_hf_configs.py).

Per layer, with h the hidden size, F a dense MLP width, f an expert width, E experts, N norms:
attention h*(a + 2*kv)*d + a*d*h (+ biases, + 2d for q/k RMSNorms); gated MLP 3*h*F (plain 2*h*F);
MoE layer attention + E*3*h*f + shared 3*h*f_s + router h*E; norms N*h (RMSNorm) or 2*N*h (LayerNorm).
Llama 4's q/k norm is a weightless L2 norm, so it adds nothing; vision towers are not counted.

Per-component counts matter beyond the total: tensor parallelism splits the projections but
replicates norms, expert parallelism splits only the experts, and pipeline stages hold whole layers
plus the embedding (first stage) or the LM head (last stage).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .model_spec import ModelSpec


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of each part of the model (elements, not bytes)."""

    spec: ModelSpec

    # --- attention ---------------------------------------------------------------------------
    @cached_property
    def attention(self) -> int:
        """Projections of one attention block (Q, K, V, O, and MLA's low-rank paths), biases included."""
        m = self.spec
        h = m.hidden_size
        if m.is_mla:
            # DeepSeek-V3 (modeling_deepseek_v3.py): q_a_proj h x q_lora, q_a_layernorm q_lora,
            # q_b_proj q_lora x a*(nope+rope) (or q_proj h x a*(nope+rope) when q_lora_rank is 0),
            # kv_a_proj_with_mqa h x (kv_lora + rope), kv_a_layernorm kv_lora,
            # kv_b_proj kv_lora x a*(nope + v), o_proj a*v x h.
            a = m.num_attention_heads
            if m.q_lora_rank:
                q = h * m.q_lora_rank + m.q_lora_rank + m.q_lora_rank * a * m.q_head_dim
            else:
                q = h * a * m.q_head_dim
            kv = h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
            kv += m.kv_lora_rank * a * (m.qk_nope_head_dim + m.v_head_dim)
            o = a * m.v_head_dim * h
            return q + kv + o + (h if m.linear_bias else 0)
        q_width = m.num_attention_heads * m.head_dim
        kv_width = m.num_kv_heads * m.head_dim
        weights = h * (q_width + 2 * kv_width) + q_width * h
        bias = (q_width + 2 * kv_width if m.qkv_bias else 0) + (h if m.linear_bias else 0)
        return weights + bias + self._attention_extras

    @cached_property
    def _attention_extras(self) -> int:
        """Qwen3's q_norm and k_norm (one head_dim vector each, modeling_qwen3_moe.py) and GPT-OSS's
        per-head sink logits (modeling_gpt_oss.py ``sinks``)."""
        m = self.spec
        return (2 * m.head_dim if m.qk_norm else 0) + (m.num_attention_heads if m.attention_sinks else 0)

    @cached_property
    def attention_tp_replicated(self) -> int:
        """Attention parameters that tensor parallelism does not split.

        Megatron splits the head dimension of every projection; MLA's down-projections
        (q_a, kv_a) and their norms are replicated, as is the output-projection bias.
        """
        m = self.spec
        h = m.hidden_size
        replicated = h if m.linear_bias else 0
        if m.is_mla:
            if m.q_lora_rank:
                replicated += h * m.q_lora_rank + m.q_lora_rank
            replicated += h * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank
        return replicated + (2 * m.head_dim if m.qk_norm else 0)

    # --- MLPs ----------------------------------------------------------------------------------
    def _mlp(self, intermediate: int) -> int:
        h = self.spec.hidden_size
        matrices = 3 if self.spec.gated_mlp else 2
        bias = (intermediate * (2 if self.spec.gated_mlp else 1) + h) if self.spec.linear_bias else 0
        return matrices * h * intermediate + bias

    @cached_property
    def dense_mlp(self) -> int:
        """One dense MLP: up (and gate) h x F, down F x h, biases if any."""
        return self._mlp(self.spec.ffn_hidden_size) if self.spec.ffn_hidden_size else 0

    @cached_property
    def expert(self) -> int:
        """One routed expert."""
        return self._mlp(self.spec.moe_ffn_hidden_size) if self.spec.is_moe else 0

    @cached_property
    def shared_experts(self) -> int:
        """The shared experts of one MoE layer (all of them together)."""
        m = self.spec
        return self._mlp(m.shared_expert_ffn_hidden_size) if m.shared_expert_ffn_hidden_size else 0

    @cached_property
    def router(self) -> int:
        """Gate of one MoE layer: h x E. DeepSeek-V3 adds an E-wide score-correction bias;
        Qwen-MoE a 1 x h gate on the shared expert."""
        m = self.spec
        if not m.is_moe:
            return 0
        extra = m.extra.get("router_extra_params", 0)
        return m.hidden_size * m.num_experts + int(extra)

    @cached_property
    def layer_norms(self) -> int:
        """The norms of a decoder layer: two (before attention and before the MLP), four in Gemma 2/3
        (``ModelSpec.norms_per_layer``)."""
        return self.spec.norms_per_layer * self.spec.norm_params

    # --- per layer ---------------------------------------------------------------------------
    @cached_property
    def dense_layer(self) -> int:
        return self.attention + self.dense_mlp + self.layer_norms

    @cached_property
    def moe_layer(self) -> int:
        """A MoE decoder layer with all its experts."""
        m = self.spec
        if not m.is_moe:
            return 0
        return (self.attention + self.layer_norms + self.router + self.shared_experts
                + m.num_experts * self.expert)

    @cached_property
    def moe_layer_active(self) -> int:
        """Parameters one token touches in a MoE layer: top-k routed experts."""
        m = self.spec
        if not m.is_moe:
            return 0
        return (self.attention + self.layer_norms + self.router + self.shared_experts
                + m.experts_per_token * self.expert)

    # --- outside the layers ------------------------------------------------------------------
    @cached_property
    def embedding(self) -> int:
        """Token embedding V x h (plus the learned position table, on the same pipeline stage)."""
        m = self.spec
        positions = m.max_position_embeddings * m.hidden_size if m.position_embedding_type == "learned" else 0
        return m.vocab_size * m.hidden_size + positions

    @cached_property
    def lm_head(self) -> int:
        """Output projection h x V; zero when tied to the embedding."""
        m = self.spec
        return 0 if m.tie_embeddings else m.vocab_size * m.hidden_size

    @cached_property
    def final_norm(self) -> int:
        return self.spec.norm_params

    # --- totals ----------------------------------------------------------------------------
    @cached_property
    def layers_total(self) -> int:
        m = self.spec
        return m.num_dense_layers * self.dense_layer + m.num_moe_layers * self.moe_layer

    @cached_property
    def total(self) -> int:
        """All parameters, without multi-token-prediction modules."""
        return self.layers_total + self.embedding + self.lm_head + self.final_norm

    @cached_property
    def active(self) -> int:
        """Parameters used per token: non-routed parameters plus top-k experts (embedding included)."""
        m = self.spec
        layers = m.num_dense_layers * self.dense_layer + m.num_moe_layers * self.moe_layer_active
        return layers + self.embedding + self.lm_head + self.final_norm

    @cached_property
    def routed_experts_total(self) -> int:
        """Parameters that expert parallelism splits: every routed expert of every MoE layer."""
        return self.spec.num_moe_layers * self.spec.num_experts * self.expert

    @cached_property
    def attention_vectors(self) -> int:
        """Bias and norm vectors inside the attention count (not matrix multiplications)."""
        m = self.spec
        h = m.hidden_size
        vectors = h if m.linear_bias else 0
        if m.is_mla:
            vectors += (m.q_lora_rank if m.q_lora_rank else 0) + m.kv_lora_rank
        elif m.qkv_bias:
            vectors += (m.num_attention_heads + 2 * m.num_kv_heads) * m.head_dim
        return vectors + self._attention_extras


def count_parameters(spec: ModelSpec) -> ParameterCounts:
    return ParameterCounts(spec)
