"""Serving plans as a structure of arrays, so that the serving cost model prices many plans in one call.

A serving plan is one or two kinds of engine *instance* (one model copy on ``gpus_per_instance`` GPUs):
- aggregated (``mode`` 0): every instance runs prefill and decode, with chunked prefill; the plan's
  ``prefill`` and ``decode`` instance arrays are the same layout, and ``prefill_instances`` equals
  ``decode_instances`` (the replicas), counted once.
- disaggregated (``mode`` 1): prefill instances hand each request's KV cache to decode instances
  (Splitwise, DistServe); each phase has its own layout and instance count.

Inside an instance, names follow vLLM / SGLang / TensorRT-LLM:
- ``tp`` tensor parallel over attention (vLLM ``--tensor-parallel-size``), ``pp`` pipeline stages,
- ``attn_dp`` attention data parallel (SGLang ``--dp-size`` with ``--enable-dp-attention``, vLLM
  ``--data-parallel-size`` with expert parallelism, TensorRT-LLM ``enable_attention_dp``): each attention
  rank holds its own requests and KV cache,
- ``ep`` expert parallel and ``moe_tp`` the tensor split of each expert, with tp x attn_dp = moe_tp x ep
  (the MoE layers regroup the same ranks). Dense models have ep = 1 and moe_tp = tp x attn_dp.
GPUs per instance = tp x pp x attn_dp.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

WEIGHT_PRECISIONS = ("bf16", "fp8", "fp4")
"""Weight storage and GEMM precision: bf16/fp16; FP8 (E4M3, per-tensor or block scales); FP4 (NVFP4's
E2M1 with an E4M3 scale per 16 values, or MXFP4's E8M0 scale per 32; GPT-OSS ships MXFP4 experts)."""
KV_DTYPES = ("bf16", "fp8")
"""KV cache element type (vLLM ``--kv-cache-dtype auto|fp8``)."""
MODES = ("agg", "disagg")

INSTANCE_INT_COLUMNS = ("tp", "pp", "ep", "attn_dp", "moe_tp", "weight_precision", "kv_dtype", "max_num_seqs",
                        "max_num_batched_tokens")
INSTANCE_BOOL_COLUMNS = ("cuda_graphs",)


@dataclass
class InstanceArrays:
    """N engine-instance layouts, one array per knob (all of length N)."""

    tp: np.ndarray
    """Tensor-parallel degree of attention (and of dense MLPs)."""
    pp: np.ndarray
    """Pipeline stages."""
    ep: np.ndarray
    """Expert-parallel degree; 1 for dense models."""
    attn_dp: np.ndarray
    """Attention data-parallel ranks, each with its own requests and KV cache; 1 = none."""
    moe_tp: np.ndarray
    """Tensor split of each expert; tp x attn_dp = moe_tp x ep."""
    weight_precision: np.ndarray
    """Index into :data:`WEIGHT_PRECISIONS`."""
    kv_dtype: np.ndarray
    """Index into :data:`KV_DTYPES`."""
    max_num_seqs: np.ndarray
    """Most requests decoding at once per attention rank (vLLM ``--max-num-seqs``, SGLang
    ``--max-running-requests`` / attn_dp, TensorRT-LLM ``max_batch_size``)."""
    max_num_batched_tokens: np.ndarray
    """Token budget of one engine step, i.e. the chunked-prefill chunk (vLLM ``--max-num-batched-tokens``,
    SGLang ``--chunked-prefill-size``, TensorRT-LLM ``max_num_tokens``)."""
    cuda_graphs: np.ndarray
    """Decode steps replay captured CUDA graphs (False = eager, vLLM ``--enforce-eager``)."""

    def __post_init__(self) -> None:
        n = None
        for f in fields(self):
            value = np.atleast_1d(np.asarray(getattr(self, f.name)))
            value = value.astype(bool, copy=False) if f.name in INSTANCE_BOOL_COLUMNS else value.astype(np.int64, copy=False)
            setattr(self, f.name, value)
            n = len(value) if n is None else n
            if len(value) != n:
                raise ValueError(f"instance column {f.name} has {len(value)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.tp)

    @property
    def gpus(self) -> np.ndarray:
        """GPUs one instance occupies."""
        return self.tp * self.pp * self.attn_dp

    def take(self, index: np.ndarray | slice) -> "InstanceArrays":
        return InstanceArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def record(self, index: int) -> dict[str, Any]:
        """Instance ``index`` as plain values, precisions by name (the form emitters and reports take)."""
        row: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)[index]
            if f.name == "weight_precision":
                row[f.name] = WEIGHT_PRECISIONS[int(value)]
            elif f.name == "kv_dtype":
                row[f.name] = KV_DTYPES[int(value)]
            else:
                row[f.name] = bool(value) if f.name in INSTANCE_BOOL_COLUMNS else int(value)
        return row

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> "InstanceArrays":
        """Build from columns; precisions may be given by name. Missing knobs: pp, ep, attn_dp 1,
        moe_tp = tp x attn_dp / ep, bf16 weights and KV, cuda_graphs True; max_num_seqs and
        max_num_batched_tokens are required."""
        n = len(np.atleast_1d(columns["tp"]))

        def column(name: str, default: Any) -> np.ndarray:
            value = columns.get(name, default)
            if name == "weight_precision":
                value = _codes(value, WEIGHT_PRECISIONS, name)
            elif name == "kv_dtype":
                value = _codes(value, KV_DTYPES, name)
            return np.broadcast_to(np.asarray(value), (n,)).copy()

        tp, attn_dp, ep = column("tp", 1), column("attn_dp", 1), column("ep", 1)
        return cls(tp=tp, pp=column("pp", 1), ep=ep, attn_dp=attn_dp,
                   moe_tp=column("moe_tp", (tp * attn_dp) // np.maximum(ep, 1)),
                   weight_precision=column("weight_precision", 0), kv_dtype=column("kv_dtype", 0),
                   max_num_seqs=column("max_num_seqs", None), max_num_batched_tokens=column("max_num_batched_tokens", None),
                   cuda_graphs=column("cuda_graphs", True))


def _codes(value: Any, names: tuple[str, ...], field: str) -> Any:
    items = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    out = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"{field} must be one of {', '.join(names)}, got {item!r}")
            out.append(names.index(item))
        else:
            out.append(int(item))
    return out if isinstance(value, (list, tuple, np.ndarray)) else out[0]


@dataclass
class ServingPlanArrays:
    """N serving plans: a mode, a prefill and a decode instance layout, and how many of each."""

    mode: np.ndarray
    """0 aggregated, 1 prefill/decode disaggregated (:data:`MODES`)."""
    prefill: InstanceArrays
    """Layout of the instances that run prefill (in aggregated mode, the same as ``decode``)."""
    decode: InstanceArrays
    """Layout of the instances that run decode."""
    prefill_instances: np.ndarray
    """Prefill instances (aggregated: the replicas, equal to ``decode_instances``)."""
    decode_instances: np.ndarray
    """Decode instances (aggregated: the replicas)."""

    def __post_init__(self) -> None:
        self.mode = np.atleast_1d(np.asarray(self.mode)).astype(np.int64)
        self.prefill_instances = np.atleast_1d(np.asarray(self.prefill_instances)).astype(np.int64)
        self.decode_instances = np.atleast_1d(np.asarray(self.decode_instances)).astype(np.int64)
        n = len(self.mode)
        for name in ("prefill", "decode", "prefill_instances", "decode_instances"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"serving plan column {name} has {len(getattr(self, name))} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.mode)

    @property
    def disaggregated(self) -> np.ndarray:
        return self.mode == 1

    @property
    def num_gpus(self) -> np.ndarray:
        """Every GPU the plan holds: aggregated replicas once; disaggregated prefill plus decode."""
        decode = self.decode.gpus * self.decode_instances
        return np.where(self.disaggregated, self.prefill.gpus * self.prefill_instances + decode, decode)

    def take(self, index: np.ndarray | slice) -> "ServingPlanArrays":
        return ServingPlanArrays(mode=self.mode[index], prefill=self.prefill.take(index), decode=self.decode.take(index),
                                 prefill_instances=self.prefill_instances[index],
                                 decode_instances=self.decode_instances[index])

    def record(self, index: int) -> dict[str, Any]:
        """Plan ``index`` as ``{"mode", "prefill", "decode", "prefill_instances", "decode_instances",
        "num_gpus"}`` with instance records (aggregated plans repeat the one layout)."""
        return {"mode": MODES[int(self.mode[index])], "prefill": self.prefill.record(index),
                "decode": self.decode.record(index), "prefill_instances": int(self.prefill_instances[index]),
                "decode_instances": int(self.decode_instances[index]), "num_gpus": int(self.num_gpus[index])}

    @classmethod
    def aggregated(cls, instances: InstanceArrays, replicas: Any) -> "ServingPlanArrays":
        n = len(instances)
        replicas = np.broadcast_to(np.asarray(replicas), (n,)).copy()
        return cls(mode=np.zeros(n, dtype=np.int64), prefill=instances, decode=instances,
                   prefill_instances=replicas, decode_instances=replicas)

    @classmethod
    def disaggregated_plans(cls, prefill: InstanceArrays, decode: InstanceArrays, prefill_instances: Any,
                            decode_instances: Any) -> "ServingPlanArrays":
        n = len(decode)
        return cls(mode=np.ones(n, dtype=np.int64), prefill=prefill, decode=decode,
                   prefill_instances=np.broadcast_to(np.asarray(prefill_instances), (n,)).copy(),
                   decode_instances=np.broadcast_to(np.asarray(decode_instances), (n,)).copy())
