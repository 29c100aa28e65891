"""The named hard rules of a serving plan, checked for many plans at once.

Each rule has a name and one sentence (as :mod:`optimizer.plan_rules` has for training), so the search,
``serve evaluate``'s ``why_not`` and the "nothing meets the SLO" advice speak one language. A rule is
checked on every instance kind a plan runs (prefill and decode; the same layout when aggregated).

Groups that leave the scale-up domain are not refused: a TP group or an attention-DP x EP group wider
than the NVLink domain is priced on the NIC by the step model (:mod:`hardware.collectives` places
``min(group, domain)`` ranks per domain), and :func:`nic_groups` says which plans that is.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from hardware.schema import ClusterSpec

from ..model_spec import CHECKPOINT_FORMAT_PRECISION, ModelSpec
from .plan import KV_DTYPES, WEIGHT_PRECISIONS, InstanceArrays, ServingPlanArrays

SERVING_RULES: dict[str, str] = {
    "fits_cluster": "the plan's GPUs (every prefill and decode instance) fit in the cluster",
    "heads_divisible_by_tp": "attention heads divisible by tp, and KV heads divisible by tp or tp a multiple "
                             "of the KV heads (then each KV head is replicated on tp / n_kv ranks)",
    "experts_divisible_by_ep": "routed experts divisible by ep (dense models: ep = 1)",
    "moe_groups_consistent": "tp x attn_dp = moe_tp x ep: the MoE layers regroup the attention ranks",
    "pp_within_layers": "no more pipeline stages than layers",
    "precision_supported": "the GPU runs the weight and KV precision: FP8 / FP4 weights natively on FP8 / FP4 "
                           "tensor cores (Hopper, Ada, MI300 / Blackwell) or weight-only (stored low, dequantized "
                           "to BF16 GEMMs: Marlin-class kernels, NVIDIA from Ampere); an FP8 KV cache needs FP8 "
                           "(peak_tflops_fp8)",
    "weights_fit": "the weights of the heaviest stage fit in gpu_memory_utilization of the GPU with the CUDA "
                   "context, graph pool and communication buffers",
    "kv_fits_one_request": "the KV pool left after weights and workspace holds one max_model_len request",
    "kv_fits_batch": "the KV pool holds the running batch the load needs (max load: max_num_seqs requests of "
                     "the mean context)",
    "prefill_workspace_fits": "the activations of one chunked-prefill step (max_num_batched_tokens) fit beside "
                              "the weights",
    "ttft_slo_met": "time to first token at the SLO percentile within the target, queueing included",
    "tpot_slo_met": "time per output token at the SLO percentile within the target, prefill interference included",
}
"""Rule name -> what it requires."""

NIC_GROUPS: dict[str, str] = {
    "tp": "the tensor-parallel group spans more GPUs than one NVLink domain: its all-reduces are priced on the NIC",
    "attn_dp_x_ep": "the attention-DP x EP group spans more GPUs than one NVLink domain: dispatch and combine "
                    "are priced on the NIC",
}


WEIGHT_ONLY_FAMILIES = ("ampere", "hopper", "blackwell")
"""GPU families (:func:`cost_model.calibration.bands.gpu_family`) with weight-only low-precision kernels: the
weights stay FP8 / FP4 in HBM and are dequantized to BF16 in registers before BF16 tensor-core MMAs.
vLLM: "FP8 models will run on compute capability >= 7.5 (Turing) as weight-only W8A16, utilizing FP8 Marlin"
(docs.vllm.ai, Quantization > FP8 W8A8; vllm-project/vllm PR #5975 "Expand FP8 support to Ampere GPUs using
FP8 Marlin"); the supported-hardware table lists Marlin (GPTQ/AWQ/FP8) on Ampere, Ada and Hopper, none on
AMD (docs.vllm.ai, Quantization > Supported Hardware); MXFP4 MoE weights (GPT-OSS) run below SM 9.0 on
Marlin and on Hopper on the Triton ``matmul_ogs`` kernels with BF16 activations
(``vllm/model_executor/layers/quantization/mxfp4.py``, ``VLLM_MXFP4_USE_MARLIN`` in ``vllm/envs.py``), and
NVFP4 linear layers on Marlin (``MarlinNvFp4LinearKernel``). AMD GPUs (``cdna3``) and unknown families are
not listed: there a precision without its tensor cores is refused."""


def weight_precision_mode(gpu: Any, precision: str) -> str:
    """How ``gpu`` runs weights of ``precision``: ``native`` (its tensor cores: BF16 always, FP8 with a
    ``peak_tflops_fp8``, FP4 with a ``peak_tflops_fp4``), ``weight_only`` (stored low, BF16 GEMMs after a
    dequantization: :data:`WEIGHT_ONLY_FAMILIES`) or ``unsupported``."""
    from ..calibration.bands import gpu_family

    native = {"bf16": True, "fp8": bool(gpu.peak_tflops_fp8), "fp4": bool(gpu.peak_tflops_fp4)}
    if native.get(precision, False):
        return "native"
    if precision in native and gpu_family(gpu) in WEIGHT_ONLY_FAMILIES:
        return "weight_only"
    return "unsupported"


MXFP4_ACTIVATION_PRECISION = "fp8"
"""MMA precision of MXFP4 weights on a GPU with FP4 tensor cores: the activations are quantized to MXFP8, not
FP4 (W4A8). TensorRT-LLM's GPT-OSS deployment guide ("MoE Backend Support Matrix": B200/GB200/B300/GB300,
activation type MXFP8, MoE weights type MXFP4, for both its TRTLLM and CUTLASS MoE backends); vLLM's Blackwell
MXFP4 path runs FlashInfer's ``mxfp4 x mxfp8`` MoE kernels (``vllm/model_executor/layers/quantization/mxfp4.py``).
An MXFP4 checkpoint's GEMMs thus run at the FP8 tensor-core rate, half the FP4 one."""


def part_gemm_precision(model: ModelSpec, gpu: Any, precision: str, part: str) -> str:
    """Precision whose tensor-core rate one layer ``part`` (:data:`cost_model.model_spec.QUANTIZABLE_PARTS`)
    computes at when the instance serves its weights in ``precision``.

    * A quantized checkpoint served in its own kind (GPT-OSS's MXFP4 served as fp4) keeps the parts it did not
      quantize in BF16 (its ``modules_to_not_convert``: GPT-OSS's attention): they load and run as BF16 GEMMs,
      as :func:`cost_model.serving.memory.part_weight_bytes` stores them.
    * MXFP4 parts on FP4 tensor cores run with MXFP8 activations (:data:`MXFP4_ACTIVATION_PRECISION`).
    * Otherwise the instance's precision (weight-only on a GPU without its tensor cores:
      :func:`weight_precision_mode`)."""
    stored = model.checkpoint_weight_format
    if precision == "bf16" or not stored or CHECKPOINT_FORMAT_PRECISION[stored] != precision:
        return precision
    if model.checkpoint_quantized_parts and part not in model.checkpoint_quantized_parts:
        return "bf16"
    if stored == "mxfp4" and weight_precision_mode(gpu, precision) == "native":
        return MXFP4_ACTIVATION_PRECISION
    return precision


def kv_dtype_supported(gpu: Any, kv_dtype: str) -> bool:
    """Whether ``gpu`` keeps a KV cache of ``kv_dtype``: FP8 where it has FP8 tensor cores (the attention
    kernels read FP8 K and V into FP8 MMAs: FlashAttention-3, FlashInfer, TensorRT-LLM's XQA)."""
    return kv_dtype == "bf16" or bool(gpu.peak_tflops_fp8)


def rule_sentence(name: str) -> str | None:
    """What serving rule ``name`` requires (None for an unknown name)."""
    return SERVING_RULES.get(name)


def _layout_broken(model: ModelSpec, cluster: ClusterSpec, instances: InstanceArrays) -> dict[str, np.ndarray]:
    tp = instances.tp
    heads, kv_heads = model.num_attention_heads, model.num_kv_heads
    if model.is_mla:  # every rank holds the latent; only the query/output heads split
        heads_ok = heads % tp == 0
    else:
        heads_ok = (heads % tp == 0) & ((kv_heads % tp == 0) | (tp % kv_heads == 0))
    if model.is_moe:
        experts_ok = model.num_experts % np.maximum(instances.ep, 1) == 0
    else:
        experts_ok = instances.ep == 1
    consistent = instances.tp * instances.attn_dp == instances.moe_tp * instances.ep
    gpu = cluster.gpu
    weight_ok = np.array([weight_precision_mode(gpu, name) != "unsupported" for name in WEIGHT_PRECISIONS])
    kv_ok = np.array([kv_dtype_supported(gpu, name) for name in KV_DTYPES])
    supported = weight_ok[instances.weight_precision] & kv_ok[instances.kv_dtype]
    return {"heads_divisible_by_tp": ~heads_ok, "experts_divisible_by_ep": ~experts_ok,
            "moe_groups_consistent": ~consistent, "pp_within_layers": instances.pp > model.num_layers,
            "precision_supported": ~supported}


def serving_violations(model: ModelSpec, cluster: ClusterSpec, plans: ServingPlanArrays,
                       memory_checks: Mapping[str, np.ndarray] | None = None,
                       load_checks: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """For each rule of :data:`SERVING_RULES`, a boolean array over plans: True where the plan breaks it.

    ``memory_checks``: ``weights_fit``, ``kv_fits_one_request``, ``prefill_workspace_fits`` as booleans
    (True = holds), already combined over the plan's instance kinds; ``load_checks``: ``kv_fits_batch``,
    ``ttft_slo_met``, ``tpot_slo_met`` (True = holds). Rules whose check is not given are reported unbroken
    (the layout rules alone, before pricing)."""
    prefill = _layout_broken(model, cluster, plans.prefill)
    decode = _layout_broken(model, cluster, plans.decode)
    broken = {name: prefill[name] | decode[name] for name in prefill}
    broken["fits_cluster"] = plans.num_gpus > cluster.num_gpus
    n = len(plans)
    for checks in (memory_checks or {}, load_checks or {}):
        for name, holds in checks.items():
            if name not in SERVING_RULES:
                raise KeyError(f"unknown serving rule {name!r}")
            broken[name] = ~np.broadcast_to(np.asarray(holds, dtype=bool), (n,))
    return {name: broken.get(name, np.zeros(n, dtype=bool)) for name in SERVING_RULES}


def nic_groups(cluster: ClusterSpec, plans: ServingPlanArrays, model: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """Which plans have a TP group or an attention-DP x EP group wider than the NVLink domain (priced on the
    NIC, not refused): :data:`NIC_GROUPS`.

    The attention-DP x EP group is the MoE layers' dispatch/combine group (``tp x attn_dp = moe_tp x ep``
    ranks): a dense model has no such group (its ``ep`` is 1, and the step model prices no dispatch), so
    ``model`` dense never flags it, however wide its TP. Without ``model`` every plan is taken as MoE."""
    domain = cluster.topology.domain_gpus
    moe = True if model is None else bool(model.is_moe)
    out = {}
    for name, size in (("tp", lambda i: i.tp), ("attn_dp_x_ep", lambda i: i.tp * i.attn_dp)):
        over = size(plans.decode) > domain
        out[name] = over | (plans.disaggregated & (size(plans.prefill) > domain))
    if not moe:
        out["attn_dp_x_ep"] = np.zeros(len(plans), dtype=bool)
    return out


def feasible(violations: Mapping[str, np.ndarray]) -> np.ndarray:
    """Plans that break no rule."""
    masks = list(violations.values())
    return ~np.logical_or.reduce(masks) if masks else np.ones(0, dtype=bool)


def why_not(violations: Mapping[str, np.ndarray], index: int) -> list[str]:
    """'rule: sentence' for each rule plan ``index`` breaks (empty when it breaks none)."""
    return [f"{name}: {SERVING_RULES[name]}" for name, mask in violations.items() if bool(mask[index])]
