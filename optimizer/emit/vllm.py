"""vLLM's ``vllm serve`` command line for a priced serving plan (vLLM 0.34.0).

Every flag is an option of ``vllm serve``'s parser at 0.34.0 (``vllm/entrypoints/common/cli_args.py``
``make_arg_parser``: the frontend's options plus ``vllm/engine/arg_utils.py`` ``EngineArgs.add_cli_args``);
``tests/conformance/data/vllm_0.34.0.json`` is generated from that parser, and the conformance test parses
every emitted command with it. How the plan maps:

* ``--tensor-parallel-size`` tp, ``--pipeline-parallel-size`` pp, ``--data-parallel-size`` attn_dp: each
  data-parallel rank is its own engine core with its own scheduler and KV cache, which is the plan's attention
  rank, so ``--max-num-seqs`` and ``--max-num-batched-tokens`` (per engine core) are the plan's per-rank
  values. ``--enable-expert-parallel`` makes the MoE layers expert-parallel over all tp x dp ranks
  (``config/parallel.py``: "The EP group spans the TP x PCP x DP ranks"); without it they are tensor-parallel
  over the same ranks. vLLM can therefore express ep = 1 or ep = tp x attn_dp only (rule
  ``vllm_expert_parallel_degree``). For dense models data-parallel ranks are independent replicas holding the
  whole dense MLP, where the plan splits it over tp x attn_dp (rule ``vllm_dense_data_parallel``).
* chunked prefill on (``--enable-chunked-prefill``) with the plan's token budget.
* ``--kv-cache-dtype fp8`` (E4M3) or ``auto`` (the model's dtype).
* weights: a quantized checkpoint runs as stored (vLLM reads its ``quantization_config``); a BF16 checkpoint
  runs in BF16, or is quantized on load: ``--quantization fp8`` (dynamic FP8, per-tensor weight scales) or
  ``--quantization nvfp4_per_token`` (online NVFP4, SM100 only:
  ``model_executor/layers/quantization/online/nvfp4.py``).
* CUDA graphs: ``--enforce-eager`` turns them off; with them, ``--max-cudagraph-capture-size`` is the tokens of
  the plan's largest decode step (batch x (1 + drafted tokens)), so every decode batch it runs replays a graph
  (vLLM's default caps capture at 512 tokens, 1024 on Blackwell).
* disaggregated plans: each phase is a vLLM instance with ``--kv-transfer-config`` naming the
  ``NixlConnector`` (role ``kv_both``: the proxy in front decides who produces; vLLM's
  ``examples/online_serving/disaggregated_serving``), behind a proxy that sends each request to a prefill
  instance with ``max_tokens`` 1 and then to a decode instance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.serving.plan import InstanceArrays, ServingPlanArrays

from .emission import Emission
from .serving_knobs import (ServingKnobs, checkpoint_mismatch, command_text, compact_json, header,
                            heads_not_divisible, online_fp4_without_fp4_gpu, over_phases)

ENGINE = "vllm"
TESTED_VERSION = "vLLM 0.34.0"
DP_RPC_PORT = "13345"
"""Data-parallel RPC port of a multi-node launch (vLLM's documented example value)."""
KV_CONNECTOR = "NixlConnector"
"""The KV-transfer connector of disaggregated serving (vLLM ``distributed/kv_transfer/kv_connector/factory.py``)."""
ONLINE_QUANTIZATION = {"fp8": "fp8", "fp4": "nvfp4_per_token"}
"""``--quantization`` that quantizes a BF16 checkpoint on load to each precision (0.34.0's
``QuantizationMethods``)."""
SPECULATIVE_METHODS = {"mtp": "mtp", "eagle3": "eagle3", "ngram": "ngram"}
"""``--speculative-config`` ``method`` of each speculative method (``config/speculative.py`` ``SpeculativeMethod``)."""

RULES: dict[str, str] = {
    "vllm_tp_divides_heads": "vLLM needs the attention heads divisible by --tensor-parallel-size "
                             "(config/model.py verify_with_parallel_config)",
    "vllm_expert_parallel_degree": "vLLM's expert parallelism spans all tp x data-parallel ranks "
                                   "(--enable-expert-parallel): a MoE plan needs ep = 1 or ep = tp x attn_dp",
    "vllm_dense_data_parallel": "vLLM's data-parallel ranks of a dense model are independent replicas, each "
                                "holding the whole MLP over its own tp ranks: a dense plan needs attn_dp = 1 (use "
                                "replicas)",
    "vllm_checkpoint_precision": "vLLM runs a quantized checkpoint in its own format (no re-quantizing or "
                                 "de-quantizing on load): the weight precision must be the checkpoint's",
    "vllm_online_fp4": "vLLM's online NVFP4 quantization (--quantization nvfp4_per_token) needs a Blackwell (SM100) "
                       "GPU",
}
"""vLLM 0.34.0's start-up rules and what it cannot express, enforced by the serving search (name -> sentence)."""


def instance_violations(model: ModelSpec, instances: InstanceArrays, gpu: Any = None) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where vLLM refuses the instance layout or cannot run it as priced."""
    n = len(instances)
    none = np.zeros(n, dtype=bool)
    ranks = instances.tp * instances.attn_dp
    return {
        "vllm_tp_divides_heads": heads_not_divisible(instances, model),
        "vllm_expert_parallel_degree": ((instances.ep != 1) & (instances.ep != ranks)) if model.is_moe else none,
        "vllm_dense_data_parallel": none if model.is_moe else instances.attn_dp > 1,
        "vllm_checkpoint_precision": checkpoint_mismatch(instances, model),
        "vllm_online_fp4": online_fp4_without_fp4_gpu(instances, model, gpu),
    }


def violations(model: ModelSpec, plans: ServingPlanArrays, gpu: Any = None) -> dict[str, np.ndarray]:
    """:func:`instance_violations` over both phases of every plan."""
    return over_phases(instance_violations, model, plans, gpu)


def speculative_config(knobs: ServingKnobs) -> dict[str, Any] | None:
    spec = knobs.speculative
    if spec is None:
        return None
    config: dict[str, Any] = {"method": SPECULATIVE_METHODS[spec.method], "num_speculative_tokens": spec.draft_tokens}
    if spec.method == "eagle3":
        config["model"] = spec.draft_model
    return config


def cudagraph_capture_tokens(knobs: ServingKnobs) -> int:
    """``--max-cudagraph-capture-size``: the tokens of the plan's largest decode step, max_num_seqs x (1 + k) with
    k drafted tokens (vLLM captures graphs by token count, ``config/vllm.py``), within the step's token budget."""
    drafted = knobs.speculative.draft_tokens if knobs.speculative is not None else 0
    return min(knobs.max_num_seqs * (1 + drafted), knobs.max_num_batched_tokens)


def kv_transfer_config(knobs: ServingKnobs) -> dict[str, Any] | None:
    return {"kv_connector": KV_CONNECTOR, "kv_role": "kv_both"} if knobs.disaggregated else None


def _lines(knobs: ServingKnobs) -> list[list[str]]:
    lines = [["vllm", "serve", knobs.model_path],
             ["--tensor-parallel-size", str(knobs.tp), "--pipeline-parallel-size", str(knobs.pp),
              "--data-parallel-size", str(knobs.attn_dp)]]
    if knobs.model.is_moe and knobs.ep > 1:
        lines.append(["--enable-expert-parallel"])
    lines.append(["--max-num-seqs", str(knobs.max_num_seqs), "--max-num-batched-tokens",
                  str(knobs.max_num_batched_tokens), "--enable-chunked-prefill"])
    lines.append(["--max-model-len", str(knobs.max_model_len), "--gpu-memory-utilization",
                  f"{knobs.gpu_memory_utilization:g}"])
    lines.append(["--kv-cache-dtype", "fp8" if knobs.kv_dtype == "fp8" else "auto"])
    if knobs.online_quantization:
        lines.append(["--quantization", ONLINE_QUANTIZATION[knobs.online_quantization]])
    lines.append(["--max-cudagraph-capture-size", str(cudagraph_capture_tokens(knobs))] if knobs.cuda_graphs
                 else ["--enforce-eager"])
    lines.append(["--enable-prefix-caching" if knobs.enable_prefix_caching else "--disable-prefix-caching"])
    spec = speculative_config(knobs)
    if spec is not None:
        lines.append(["--speculative-config", compact_json(spec)])
    transfer = kv_transfer_config(knobs)
    if transfer is not None:
        lines.append(["--kv-transfer-config", compact_json(transfer)])
    lines += _node_lines(knobs)
    return lines


def _node_lines(knobs: ServingKnobs) -> list[list[str]]:
    """A multi-node instance: one engine per node. TP x PP larger than a node spans nodes with
    ``--nnodes/--node-rank/--master-addr`` (the multiprocessing executor); data-parallel ranks spread over nodes
    with ``--data-parallel-size-local`` ranks on each."""
    if knobs.nodes == 1:
        return []
    model_ranks = knobs.tp * knobs.pp
    if model_ranks > knobs.gpus_per_node:
        return [["--nnodes", str(knobs.nodes), "--node-rank", "$NODE_RANK", "--master-addr", "$MASTER_ADDR"]]
    local = max(1, knobs.gpus_per_node // model_ranks)
    return [["--data-parallel-size-local", str(local), "--data-parallel-start-rank", "$DP_START_RANK",
             "--data-parallel-address", "$MASTER_ADDR", "--data-parallel-rpc-port", DP_RPC_PORT]]


def argv(knobs: ServingKnobs) -> list[str]:
    return [word for line in _lines(knobs) for word in line]


def differences(knobs: ServingKnobs, gpu: Any = None) -> tuple[str, ...]:
    """What vLLM runs differently from the priced plan: the rules this instance breaks, then the rest."""
    broken = instance_violations(knobs.model, knobs.instance_arrays(), gpu)
    notes = [f"cannot run as priced: {RULES[name]}" for name, mask in broken.items() if mask[0]]
    if knobs.model.is_moe and knobs.ep > 1:
        notes.append("vLLM's default expert-parallel exchange (--all2all-backend allgather_reducescatter) gathers every "
                     "token to every EP rank and reduce-scatters the outputs, where the plan prices an all-to-all "
                     "dispatch and combine; --all2all-backend deepep_high_throughput (prefill) or deepep_low_latency "
                     "(decode) runs one, with DeepEP installed")
    if knobs.nodes > 1 and knobs.tp * knobs.pp <= knobs.gpus_per_node:
        notes.append("on every node but the first add --headless; DP_START_RANK = node index x "
                     "--data-parallel-size-local")
    return tuple(notes)


def emit(knobs: ServingKnobs, gpu: Any = None) -> Emission:
    text = header(TESTED_VERSION, knobs) + "\n" + command_text(_lines(knobs))
    if knobs.role == "decode":
        text += ("\n# in front of the prefill and decode instances, vLLM's disaggregated-serving proxy "
                 "(examples/online_serving/disaggregated_serving) sends each request to a prefill instance "
                 "(max_tokens 1), then to a decode instance")
    return Emission(framework=ENGINE, tested_version=TESTED_VERSION, argv=tuple(argv(knobs)),
                    differences=differences(knobs, gpu), text=text)
