"""One serving plan, resolved into the knobs every serving engine needs: the shared plan -> engine-knob translation.

A serving plan (:class:`cost_model.serving.plan.ServingPlanArrays`, one record of it) is one instance layout
(aggregated) or two (prefill and decode, disaggregated). :func:`build_serving_knobs` turns the record into one
:class:`ServingKnobs` per instance kind, with what the plan does not hold but a launch needs (the checkpoint
path, the longest request, the memory fraction, speculative decoding), so the three emitters
(:mod:`.vllm`, :mod:`.sglang`, :mod:`.trtllm`) translate the same numbers into their own words.

Counting conventions of the plan (``cost_model/serving/plan.py``) that every emitter maps:

* GPUs of one instance = tp x pp x attn_dp; the MoE layers regroup the tp x attn_dp ranks as moe_tp x ep;
* ``max_num_seqs`` and ``max_num_batched_tokens`` are per attention rank (each attention-DP rank runs its own
  scheduler and KV cache), so an engine whose knob counts the whole instance gets them times attn_dp.

Weight precision: a checkpoint stored quantized (``ModelSpec.checkpoint_weight_format``, read from HF
``quantization_config``) runs in its own format, which no engine re-quantizes or de-quantizes when loading;
an unquantized (BF16) checkpoint runs in BF16 or is quantized when the engine loads it (online FP8, where the
engine has it online FP4). :func:`checkpoint_precision` says which precision a checkpoint is.
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.serving.plan import WEIGHT_PRECISIONS, InstanceArrays, ServingPlanArrays

ROLES = ("aggregated", "prefill", "decode")
"""Instance kinds: an aggregated instance runs both phases; a disaggregated plan has prefill and decode ones."""

CHECKPOINT_PRECISIONS: dict[str, str] = {"": "bf16", "fp8": "fp8", "fp8_block": "fp8", "mxfp4": "fp4", "nvfp4": "fp4"}
"""``ModelSpec.checkpoint_weight_format`` -> the weight precision (:data:`WEIGHT_PRECISIONS`) it runs in."""

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""Fraction of each GPU's memory the engine may take (vLLM's default ``--gpu-memory-utilization``; the serving
cost model's ``ServingOptions.gpu_memory_utilization`` default)."""


@dataclass(frozen=True)
class SpeculativeSettings:
    """Speculative decoding as the launch writes it."""

    draft_tokens: int
    """Tokens proposed per step (k)."""
    method: str
    """``mtp`` (the model's own multi-token-prediction layers, DeepSeek-V3/R1), ``eagle3`` (a separate EAGLE-3
    draft head) or ``ngram`` (prompt lookup, no draft model)."""
    draft_model: str | None = None
    """Path or hub id of the EAGLE-3 draft head (``eagle3`` only)."""


def speculative_settings(speculative: Any, model: ModelSpec, draft_model: str | None = None) -> SpeculativeSettings | None:
    """The speculative decoding a launch runs: None without drafting (``draft_tokens`` 0); else MTP where the
    model has MTP layers, EAGLE-3 where a draft model is named, n-gram prompt lookup otherwise.
    ``speculative`` is a workload's ``SpeculativeSpec`` (``draft_tokens``), a count, or None."""
    if speculative is None:
        return None
    tokens = int(speculative if isinstance(speculative, (int, np.integer)) else getattr(speculative, "draft_tokens", 0))
    if tokens <= 0:
        return None
    if model.mtp_layers > 0:
        return SpeculativeSettings(tokens, "mtp")
    if draft_model:
        return SpeculativeSettings(tokens, "eagle3", draft_model)
    return SpeculativeSettings(tokens, "ngram")


def checkpoint_precision(model: ModelSpec) -> str:
    """The weight precision the model's checkpoint is stored in (``bf16`` when unquantized)."""
    return CHECKPOINT_PRECISIONS[getattr(model, "checkpoint_weight_format", "") or ""]


@dataclass(frozen=True)
class ServingKnobs:
    """Every knob of one instance kind of a serving plan, resolved to the values a launch writes."""

    role: str
    """One of :data:`ROLES`."""
    instances: int
    """How many instances of this kind the plan runs (each a separate engine process group)."""
    model: ModelSpec
    """The model the plan was priced for."""
    model_path: str
    """What the engine loads: a local checkpoint directory or a hub id."""
    max_model_len: int
    """Longest request (prompt + output tokens) the engine admits."""
    tp: int
    """Tensor-parallel degree of attention."""
    pp: int
    """Pipeline stages."""
    ep: int
    """Expert-parallel degree (1 for dense models)."""
    attn_dp: int
    """Attention data-parallel ranks."""
    moe_tp: int
    """Tensor split of each expert (tp x attn_dp = moe_tp x ep)."""
    weight_precision: str
    """Precision the weights run in (:data:`WEIGHT_PRECISIONS`)."""
    kv_dtype: str
    """KV cache element type (``bf16`` or ``fp8``)."""
    max_num_seqs: int
    """Most running requests per attention rank."""
    max_num_batched_tokens: int
    """Token budget of one engine step per attention rank (the chunked-prefill chunk)."""
    cuda_graphs: bool
    """Decode steps replay captured CUDA graphs."""
    checkpoint_precision: str
    """Precision the checkpoint is stored in (:func:`checkpoint_precision`)."""
    gpu_memory_utilization: float
    """Fraction of each GPU's memory the engine may take."""
    enable_prefix_caching: bool
    """Reuse the KV cache of shared prompt prefixes."""
    speculative: SpeculativeSettings | None
    """Speculative decoding, or None."""
    gpus_per_node: int = 8
    """GPUs per node of the cluster (an instance larger than a node spans several)."""

    @property
    def gpus(self) -> int:
        """GPUs one instance occupies."""
        return self.tp * self.pp * self.attn_dp

    @property
    def nodes(self) -> int:
        """Nodes one instance spans."""
        return max(1, math.ceil(self.gpus / self.gpus_per_node))

    @property
    def disaggregated(self) -> bool:
        return self.role != "aggregated"

    def instance_arrays(self) -> InstanceArrays:
        """This instance kind as a one-row :class:`InstanceArrays`, for the engines' rules."""
        return InstanceArrays.from_columns({
            "tp": self.tp, "pp": self.pp, "ep": self.ep, "attn_dp": self.attn_dp, "moe_tp": self.moe_tp,
            "weight_precision": self.weight_precision, "kv_dtype": self.kv_dtype, "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens, "cuda_graphs": self.cuda_graphs})

    @property
    def online_quantization(self) -> str | None:
        """The precision the engine quantizes a BF16 checkpoint to when loading it, or None."""
        if self.checkpoint_precision == "bf16" and self.weight_precision != "bf16":
            return self.weight_precision
        return None


def build_serving_knobs(plan: Mapping[str, Any], model: ModelSpec, model_path: str, max_model_len: int, *,
                        speculative: Any = None, draft_model: str | None = None,
                        gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
                        enable_prefix_caching: bool = True, gpus_per_node: int = 8) -> list[ServingKnobs]:
    """One :class:`ServingKnobs` per instance kind of ``plan`` (a ``ServingPlanArrays.record``): the aggregated
    instance, or the prefill then the decode instance."""
    if int(max_model_len) <= 0:
        raise ValueError(f"max_model_len must be a positive number of tokens, got {max_model_len!r}")
    if not 0.0 < float(gpu_memory_utilization) <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be a fraction in (0, 1], got {gpu_memory_utilization!r}")
    spec = speculative_settings(speculative, model, draft_model)
    stored = checkpoint_precision(model)
    disaggregated = plan["mode"] == "disagg"
    kinds = (("prefill", plan["prefill"], plan["prefill_instances"]), ("decode", plan["decode"], plan["decode_instances"])) \
        if disaggregated else (("aggregated", plan["decode"], plan["decode_instances"]),)
    knobs = []
    for role, layout, count in kinds:
        knobs.append(ServingKnobs(
            role=role, instances=int(count), model=model, model_path=str(model_path), max_model_len=int(max_model_len),
            tp=int(layout["tp"]), pp=int(layout["pp"]), ep=int(layout["ep"]), attn_dp=int(layout["attn_dp"]),
            moe_tp=int(layout["moe_tp"]), weight_precision=str(layout["weight_precision"]),
            kv_dtype=str(layout["kv_dtype"]), max_num_seqs=int(layout["max_num_seqs"]),
            max_num_batched_tokens=int(layout["max_num_batched_tokens"]), cuda_graphs=bool(layout["cuda_graphs"]),
            checkpoint_precision=stored, gpu_memory_utilization=float(gpu_memory_utilization),
            enable_prefix_caching=bool(enable_prefix_caching),
            # a prefill instance emits one token per request: nothing to draft
            speculative=None if role == "prefill" else spec, gpus_per_node=int(gpus_per_node)))
    return knobs


# --- shared pieces of the engines' rules -------------------------------------------------------------------


def precision_codes(name: str) -> int:
    return WEIGHT_PRECISIONS.index(name)


def checkpoint_mismatch(instances: InstanceArrays, model: ModelSpec) -> np.ndarray:
    """True where the plan runs a quantized checkpoint in a precision other than its own (no engine converts
    a quantized checkpoint's weights when loading it)."""
    stored = checkpoint_precision(model)
    if stored == "bf16":
        return np.zeros(len(instances), dtype=bool)
    return instances.weight_precision != precision_codes(stored)


def online_fp4_without_fp4_gpu(instances: InstanceArrays, model: ModelSpec, gpu: Any) -> np.ndarray:
    """True where a BF16 checkpoint would be quantized to FP4 on a GPU without FP4 tensor cores (the engines'
    online NVFP4 kernels are Blackwell-only); False where the GPU is not known."""
    if gpu is None or getattr(gpu, "peak_tflops_fp4", None) is not None or checkpoint_precision(model) != "bf16":
        return np.zeros(len(instances), dtype=bool)
    return instances.weight_precision == precision_codes("fp4")


def heads_not_divisible(instances: InstanceArrays, model: ModelSpec) -> np.ndarray:
    """True where attention's tensor-parallel degree does not divide the query heads (every engine shards
    query heads evenly; KV heads fewer than tp are replicated)."""
    return model.num_attention_heads % instances.tp != 0


def over_phases(instance_violations: Any, model: ModelSpec, plans: ServingPlanArrays, gpu: Any) -> dict[str, np.ndarray]:
    """An engine's instance rules applied to both phases of every plan (an aggregated plan's are the same):
    a plan breaks a rule where either of its instance kinds does."""
    prefill, decode = instance_violations(model, plans.prefill, gpu), instance_violations(model, plans.decode, gpu)
    return {name: prefill[name] | decode[name] for name in prefill}


# --- shared text helpers ------------------------------------------------------------------------------------


def compact_json(value: Any) -> str:
    """JSON as the engines' ``--*-config`` options take it, keys in order, no spaces."""
    return json.dumps(value, separators=(",", ":"))


def quote(word: str) -> str:
    """Shell quoting that leaves ``$NODE_RANK``-style variables for the shell to expand."""
    return f'"{word}"' if word.startswith("$") else shlex.quote(word)


def command_text(lines: list[list[str]]) -> str:
    """A command split over lines with backslashes, each word shell-quoted."""
    return " \\\n  ".join(" ".join(quote(word) for word in line) for line in lines)


def header(engine_version: str, knobs: ServingKnobs) -> str:
    """The comment line above one instance kind's command."""
    what = {"aggregated": "aggregated instance", "prefill": "prefill instance", "decode": "decode instance"}[knobs.role]
    text = (f"# {engine_version}: {knobs.instances} x {what} of {knobs.gpus} GPU(s) "
            f"(tp {knobs.tp}, pp {knobs.pp}, attention dp {knobs.attn_dp}, ep {knobs.ep}, moe tp {knobs.moe_tp})")
    if knobs.nodes > 1:
        text += f"; each spans {knobs.nodes} nodes of {knobs.gpus_per_node} (set NODE_RANK and MASTER_ADDR on each)"
    return text
