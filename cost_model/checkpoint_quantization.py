"""The weight storage format of a quantized checkpoint, read from Hugging Face ``quantization_config``.

What a serving engine holds per weight depends on the checkpoint: DeepSeek-V3/R1 ship block FP8, GPT-OSS
ships MXFP4 experts beside BF16 attention, NVIDIA's ModelOpt and the compressed-tensors checkpoints ship
FP8 or NVFP4. The formats read (config.json ``quantization_config``):

* ``quant_method: fp8`` (transformers ``FineGrainedFP8Config``; DeepSeek-V3/R1): FP8 E4M3 weights,
  ``weight_block_size: [128, 128]`` = one fp32 scale per block (``fp8_block``), else per tensor/channel
  (``fp8``); every linear layer of the decoder layers unless ``modules_to_not_convert`` names it.
* ``quant_method: fbgemm_fp8``: per-channel FP8 (``fp8``).
* ``quant_method: mxfp4`` (transformers ``Mxfp4Config``; GPT-OSS): E2M1 with an E8M0 scale per 32
  (``mxfp4``); ``modules_to_not_convert`` (GPT-OSS: ``model.layers.*.self_attn``, the router, embeddings,
  LM head) stay BF16.
* ``quant_method: modelopt`` (NVIDIA TensorRT Model Optimizer): ``quant_algo`` ``FP8`` (``fp8``) or
  ``NVFP4`` (``nvfp4``: E2M1 with an E4M3 scale per 16); ``exclude_modules`` stay BF16.
* ``quant_method: compressed-tensors`` (vLLM's llm-compressor): the ``config_groups``' ``weights``
  (``num_bits`` 8 ``type: float``: ``fp8``, ``strategy: block``: ``fp8_block``; ``num_bits`` 4 ``type:
  float`` with ``group_size`` 16: ``nvfp4``, 32: ``mxfp4``), applied to the modules their ``targets`` name
  (``Linear`` = all), minus ``ignore``.

Which layer parts are quantized comes from those module lists: a pattern naming attention (``self_attn``,
``attn``), the routed experts (``experts``), shared experts (``shared_expert``) or a dense MLP (``mlp``)
for every layer (no layer index) removes or selects that part. Patterns for single layers (DeepSeek's
first dense layers, a few kept in BF16) are left out: their weight is a small share of the model.
Integer formats (AWQ, GPTQ, bitsandbytes) are not among the precisions plan-search prices: a warning
says so and the checkpoint is priced as unquantized.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from hardware.errors import InputError

from .model_spec import QUANTIZABLE_PARTS

_ROUTER = re.compile(r"router|\.gate$|\.gate\b(?!_)")
_PART_PATTERNS = (
    ({"shared_experts"}, re.compile(r"shared_expert")),
    ({"experts"}, re.compile(r"experts")),
    ({"attention"}, re.compile(r"self_attn|attn|attention")),
    ({"dense_mlp", "shared_experts", "experts"}, re.compile(r"mlp|block_sparse_moe|feed_forward")),
)
"""Parts a module pattern covers, the first match winning: a whole MLP block (``model.layers.*.mlp``)
covers a dense MLP and a MoE block's experts; routers (``mlp.router``, Mixtral's ``block_sparse_moe.gate``)
are never quantized here, so naming them changes nothing."""
_LAYER_INDEX = re.compile(r"layers\.\d+\b")


def _parts_named(patterns: Any, source: str, key: str) -> set[str]:
    """Layer parts that module-name patterns cover for every layer."""
    if patterns is None:
        return set()
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise InputError(source, f"quantization_config.{key}", "must be a list of module names or patterns",
                         "copy it from the checkpoint's config.json")
    parts: set[str] = set()
    for pattern in patterns:
        text = pattern[3:] if pattern.startswith("re:") else pattern
        if _LAYER_INDEX.search(text):
            continue  # one layer's module: left out (module docstring)
        if _ROUTER.search(text):
            continue
        for covered, regex in _PART_PATTERNS:
            if regex.search(text):
                parts |= covered
                break
    return parts


def _compressed_tensors_format(config: dict[str, Any], source: str) -> tuple[str, set[str] | None]:
    groups = config.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise InputError(source, "quantization_config.config_groups", "is missing for quant_method compressed-tensors",
                         "copy quantization_config from the checkpoint's config.json")
    formats: set[str] = set()
    targets: set[str] | None = set()  # None: every linear layer
    for name, group in groups.items():
        weights = (group or {}).get("weights") or {}
        bits, kind = weights.get("num_bits"), str(weights.get("type", "int")).lower()
        if kind == "float" and bits == 8:
            formats.add("fp8_block" if str(weights.get("strategy", "")).lower() == "block" else "fp8")
        elif kind == "float" and bits == 4:
            formats.add({16: "nvfp4", 32: "mxfp4"}.get(weights.get("group_size"), "nvfp4"))
        else:
            formats.add(f"{kind}{bits}")
        group_targets = (group or {}).get("targets") or ["Linear"]
        if "Linear" in group_targets:
            targets = None
        elif targets is not None:
            targets |= _parts_named(group_targets, source, f"config_groups.{name}.targets")
    if len(formats) != 1:
        raise InputError(source, "quantization_config.config_groups",
                         f"mixes weight formats {', '.join(sorted(formats))}; plan-search prices one per checkpoint",
                         "price the checkpoint with one weight format (remove quantization_config to price it as BF16)")
    return formats.pop(), targets


def checkpoint_quantization(config: Any, source: str = "model") -> tuple[str, tuple[str, ...]]:
    """``(checkpoint_weight_format, checkpoint_quantized_parts)`` from a ``quantization_config`` mapping
    (None or empty: ``("", ())``, an unquantized checkpoint). Parts are returned in
    :data:`QUANTIZABLE_PARTS` order; all of them when the checkpoint leaves none out."""
    if not config:
        return "", ()
    if not isinstance(config, dict):
        raise InputError(source, "quantization_config", "must be a mapping",
                         "copy it from the checkpoint's config.json")
    method = str(config.get("quant_method", "")).lower()
    selected: set[str] | None = None
    excluded: set[str] = set()
    if method == "fp8":
        block = config.get("weight_block_size")
        weight_format = "fp8_block" if block else "fp8"
        excluded = _parts_named(config.get("modules_to_not_convert"), source, "modules_to_not_convert")
    elif method == "fbgemm_fp8":
        weight_format = "fp8"
        excluded = _parts_named(config.get("modules_to_not_convert"), source, "modules_to_not_convert")
    elif method == "mxfp4":
        weight_format = "mxfp4"
        excluded = _parts_named(config.get("modules_to_not_convert"), source, "modules_to_not_convert")
    elif method == "modelopt":
        algo = str(config.get("quant_algo", "")).upper()
        weight_format = {"FP8": "fp8", "NVFP4": "nvfp4", "FP8_PB_WO": "fp8_block"}.get(algo, "")
        if not weight_format:
            return _unpriced(source, f"modelopt quant_algo {algo or '(none)'}")
        excluded = _parts_named(config.get("exclude_modules"), source, "exclude_modules")
    elif method == "compressed-tensors":
        weight_format, selected = _compressed_tensors_format(config, source)
        if weight_format not in ("fp8", "fp8_block", "nvfp4", "mxfp4"):
            return _unpriced(source, f"compressed-tensors {weight_format} weights")
        excluded = _parts_named(config.get("ignore"), source, "ignore")
    else:
        return _unpriced(source, f"quant_method {method or '(none)'}")
    parts = set(QUANTIZABLE_PARTS) if selected is None else selected
    parts -= excluded
    if not parts:
        raise InputError(source, "quantization_config", "leaves every layer part unquantized",
                         "check modules_to_not_convert / ignore / exclude_modules, or remove quantization_config")
    return weight_format, tuple(part for part in QUANTIZABLE_PARTS if part in parts)


def _unpriced(source: str, what: str) -> tuple[str, tuple[str, ...]]:
    warnings.warn(f"{source}: quantization_config: {what} is not a weight format plan-search prices (BF16, FP8, "
                  "NVFP4, MXFP4); the checkpoint is priced unquantized", UserWarning, stacklevel=4)
    return "", ()
