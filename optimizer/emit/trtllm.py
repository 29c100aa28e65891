"""TensorRT-LLM's ``trtllm-serve`` command and LLM-API options for a priced serving plan (TensorRT-LLM 1.2.1).

The options are ``trtllm-serve serve``'s click options (``tensorrt_llm/commands/serve.py``) and, in the YAML
file it takes with ``--extra_llm_api_options`` (alias ``--config``), fields of the PyTorch backend's
``TorchLlmArgs`` pydantic model and its sub-configs (``tensorrt_llm/llmapi/llm_args.py``). Their names and
choices are checked in at ``tests/conformance/data/trtllm_1.2.1.json``; CI checks every emitted option and YAML
key against it. How the plan maps (PyTorch backend, ``--backend pytorch``):

* ``--tp_size`` is the instance's width tp x attn_dp; with ``enable_attention_dp`` every one of those ranks is
  its own attention rank (attention_dp_size = tensor_parallel_size: NVIDIA Dynamo's "DP Rank Routing" page for
  TensorRT-LLM, "TP=2 acts as the world size, in effect creating 2 attention DP ranks"),
  so TensorRT-LLM expresses attn_dp = 1 (attention TP over tp_size) or tp = 1 (pure attention DP) only (rule
  ``trtllm_attention_dp_tp``). ``--ep_size`` is the MoE's expert-parallel degree; the rest of the width splits
  each expert (moe_tensor_parallel_size = tp_size / ep).
* ``--max_batch_size`` and ``--max_num_tokens`` are per attention rank (each attention-DP rank schedules its
  own requests), the plan's values; ``enable_chunked_prefill`` with the token budget.
* ``kv_cache_config.dtype`` ``fp8`` or ``auto``, ``kv_cache_config.free_gpu_memory_fraction`` the memory
  fraction (of the memory left after the weights: a difference, listed), block reuse = prefix caching.
* weights run as the checkpoint stores them: the PyTorch backend reads the quantization of a ModelOpt/HF
  checkpoint and has no online quantization (rule ``trtllm_prequantized_checkpoint``); NVFP4 kernels need
  Blackwell (rule ``trtllm_fp4_blackwell``).
* ``cuda_graph_config`` with ``max_batch_size`` the plan's batch and padding, or ``null`` (eager).
* speculative decoding: ``speculative_config`` ``MTP`` (``num_nextn_predict_layers``), ``Eagle3``
  (one-model, ``speculative_model_dir``) or ``NGram``.
* disaggregated plans: every server's YAML holds ``cache_transceiver_config`` (backend ``DEFAULT``, a buffer of
  one longest request); context (prefill) servers run without the overlap scheduler, as TensorRT-LLM's
  disaggregated-serving examples do; ``trtllm-serve disaggregated -c disagg.yaml`` routes requests.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import yaml

from cost_model.model_spec import ModelSpec
from cost_model.serving.plan import InstanceArrays, ServingPlanArrays

from .emission import Emission
from .serving_knobs import (ServingKnobs, checkpoint_precision, command_text, header, heads_not_divisible,
                            over_phases, precision_codes)

ENGINE = "trtllm"
TESTED_VERSION = "TensorRT-LLM 1.2.1"
TRANSCEIVER_BACKEND = "DEFAULT"
"""``cache_transceiver_config.backend`` (choices DEFAULT, UCX, NIXL, MOONCAKE, MPI)."""
SERVER_PORT = 8000
"""``trtllm-serve``'s default port; the disaggregated router lists each server's URL."""
_AMD = re.compile(r"\b(AMD|Instinct|MI\d{3})", re.IGNORECASE)

RULES: dict[str, str] = {
    "trtllm_tp_divides_heads": "TensorRT-LLM shards the attention heads over tp ranks: they must divide",
    "trtllm_attention_dp_tp": "TensorRT-LLM's attention data parallelism (enable_attention_dp) makes every rank of "
                              "tp_size its own attention rank: a plan needs attn_dp = 1 or tp = 1",
    "trtllm_prequantized_checkpoint": "TensorRT-LLM's PyTorch backend runs weights as the checkpoint stores them "
                                      "(no online quantization): quantize to FP8/NVFP4 with ModelOpt first",
    "trtllm_fp4_blackwell": "TensorRT-LLM's NVFP4 kernels need a Blackwell GPU",
    "trtllm_nvidia_only": "TensorRT-LLM runs on NVIDIA GPUs only",
}
"""TensorRT-LLM 1.2.1's start-up rules and what it cannot express, enforced by the serving search (name -> sentence)."""


def instance_violations(model: ModelSpec, instances: InstanceArrays, gpu: Any = None) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where TensorRT-LLM refuses the instance layout or cannot run it as priced."""
    n = len(instances)
    every, none = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    fp4 = instances.weight_precision == precision_codes("fp4")
    no_fp4 = gpu is not None and getattr(gpu, "peak_tflops_fp4", None) is None
    amd = gpu is not None and bool(_AMD.search(str(getattr(gpu, "name", ""))))
    stored = precision_codes(checkpoint_precision(model))
    return {
        "trtllm_tp_divides_heads": heads_not_divisible(instances, model),
        "trtllm_attention_dp_tp": (instances.attn_dp > 1) & (instances.tp > 1),
        "trtllm_prequantized_checkpoint": instances.weight_precision != stored,
        "trtllm_fp4_blackwell": fp4 if no_fp4 else none,
        "trtllm_nvidia_only": every if amd else none,
    }


def violations(model: ModelSpec, plans: ServingPlanArrays, gpu: Any = None) -> dict[str, np.ndarray]:
    """:func:`instance_violations` over both phases of every plan."""
    return over_phases(instance_violations, model, plans, gpu)


def speculative_config(knobs: ServingKnobs) -> dict[str, Any] | None:
    spec = knobs.speculative
    if spec is None:
        return None
    if spec.method == "mtp":
        return {"decoding_type": "MTP", "num_nextn_predict_layers": spec.draft_tokens}
    if spec.method == "eagle3":
        return {"decoding_type": "Eagle3", "max_draft_len": spec.draft_tokens, "speculative_model_dir": spec.draft_model,
                "eagle3_one_model": True}
    return {"decoding_type": "NGram", "max_draft_len": spec.draft_tokens}


def extra_options(knobs: ServingKnobs) -> dict[str, Any]:
    """The ``--extra_llm_api_options`` YAML of one instance kind (``TorchLlmArgs`` fields)."""
    options: dict[str, Any] = {
        "enable_attention_dp": knobs.attn_dp > 1,
        "enable_chunked_prefill": True,
        "kv_cache_config": {"dtype": "fp8" if knobs.kv_dtype == "fp8" else "auto",
                            "free_gpu_memory_fraction": knobs.gpu_memory_utilization,
                            "enable_block_reuse": knobs.enable_prefix_caching},
        "cuda_graph_config": ({"enable_padding": True, "max_batch_size": knobs.max_num_seqs} if knobs.cuda_graphs
                              else None),
    }
    spec = speculative_config(knobs)
    if spec is not None:
        options["speculative_config"] = spec
    if knobs.disaggregated:
        options["cache_transceiver_config"] = {"backend": TRANSCEIVER_BACKEND, "max_tokens_in_buffer": knobs.max_model_len}
        if knobs.role == "prefill":
            options["disable_overlap_scheduler"] = True
    return options


def options_file(knobs: ServingKnobs) -> str:
    """The YAML file's name for this instance kind."""
    return f"extra-llm-api-{knobs.role}.yaml"


def _lines(knobs: ServingKnobs) -> list[list[str]]:
    lines = [["trtllm-serve", knobs.model_path, "--backend", "pytorch"],
             ["--tp_size", str(knobs.tp * knobs.attn_dp), "--pp_size", str(knobs.pp)]]
    if knobs.model.is_moe:
        lines[-1] += ["--ep_size", str(knobs.ep)]
    lines.append(["--max_batch_size", str(knobs.max_num_seqs), "--max_num_tokens", str(knobs.max_num_batched_tokens),
                  "--max_seq_len", str(knobs.max_model_len)])
    lines.append(["--kv_cache_free_gpu_memory_fraction", f"{knobs.gpu_memory_utilization:g}"])
    lines.append(["--extra_llm_api_options", options_file(knobs)])
    return lines


def argv(knobs: ServingKnobs) -> list[str]:
    return [word for line in _lines(knobs) for word in line]


def disaggregated_config(prefill: ServingKnobs, decode: ServingKnobs) -> dict[str, Any]:
    """``trtllm-serve disaggregated -c`` configuration: the router and the context/generation servers' URLs."""
    def urls(kind: str, count: int) -> list[str]:
        return [f"{kind.upper()}_HOST_{i}:{SERVER_PORT}" for i in range(count)]
    return {"hostname": "localhost", "port": SERVER_PORT, "backend": "pytorch",
            "context_servers": {"num_instances": prefill.instances, "urls": urls("prefill", prefill.instances)},
            "generation_servers": {"num_instances": decode.instances, "urls": urls("decode", decode.instances)}}


def differences(knobs: ServingKnobs, gpu: Any = None) -> tuple[str, ...]:
    """What TensorRT-LLM runs differently from the priced plan: the rules this instance breaks, then the rest."""
    broken = instance_violations(knobs.model, knobs.instance_arrays(), gpu)
    notes = [f"cannot run as priced: {RULES[name]}" for name, mask in broken.items() if mask[0]]
    notes.append("kv_cache_config.free_gpu_memory_fraction is a fraction of the memory left after the weights and "
                 "activations, where the priced gpu_memory_utilization is a fraction of the whole GPU")
    if knobs.nodes > 1:
        notes.append(f"an instance of {knobs.gpus} GPUs spans {knobs.nodes} nodes: launch it under mpirun or srun "
                     "with trtllm-llmapi-launch, one rank per GPU")
    return tuple(notes)


def _yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False).rstrip("\n")


def emit(knobs: ServingKnobs, gpu: Any = None, *, prefill: ServingKnobs | None = None) -> Emission:
    """One instance kind's emission; the decode kind of a disaggregated plan (given its ``prefill`` kind) also
    carries the router's configuration and command."""
    text = "\n".join([header(TESTED_VERSION, knobs), f"cat > {options_file(knobs)} <<'EOF'",
                      _yaml(extra_options(knobs)), "EOF", command_text(_lines(knobs))])
    if knobs.role == "decode" and prefill is not None:
        text += "\n".join(["", "# the router, once every server is up:", "cat > disagg.yaml <<'EOF'",
                           _yaml(disaggregated_config(prefill, knobs)), "EOF", "trtllm-serve disaggregated -c disagg.yaml"])
    return Emission(framework=ENGINE, tested_version=TESTED_VERSION, argv=tuple(argv(knobs)),
                    differences=differences(knobs, gpu), text=text)
