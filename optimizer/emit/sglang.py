"""SGLang's ``python -m sglang.launch_server`` command line for a priced serving plan (SGLang 0.5.23).

Every flag is an option of SGLang's parser at 0.5.23 (``python/sglang/srt/server_args.py``
``ServerArgs.add_cli_args``, whose fields live in ``sglang/srt/arg_groups/fields/``);
``tests/conformance/data/sglang_0.5.23.json`` is generated from that parser, and the conformance test parses
every emitted command with it. How the plan maps:

* ``--tp-size`` is the instance's whole width, tp x attn_dp: SGLang's ``tp_size`` is "the world size, not the
  real tensor parallel size" (``arg_groups/parallel_hook.py``); attention then runs tensor-parallel over
  tp_size / attn_dp ranks in each of ``--attn-dp-size`` groups (0.5.23's replacement of ``--dp-size`` with
  ``--enable-dp-attention``, which it deprecates), and the MoE layers over ``--ep-size`` expert groups of
  tp_size / ep ranks each (``runtime_context.py``: moe_tp_size = tp_size // ep_size // moe_dp_size). Dense
  MLPs stay tensor-parallel over all tp_size ranks, as the plan prices them (moe_tp = tp x attn_dp).
* ``--max-running-requests`` counts the whole instance: SGLang gives each attention-DP rank
  max_running_requests // attn_dp (``mem_cache/kv_cache_configurator.py``), so it is the plan's per-rank
  batch times attn_dp. ``--chunked-prefill-size`` likewise: with attention DP SGLang divides it by attn_dp
  (``parallel_hook.py`` ``_handle_data_parallelism``). ``--max-prefill-tokens`` (the tokens of one prefill
  batch of one scheduler, default 16384, not divided) is the per-rank budget, so a chunk larger than 16384 is
  not cut.
* ``--kv-cache-dtype fp8_e4m3`` or ``auto``; online quantization of a BF16 checkpoint: ``--quantization fp8``
  or ``nvfp4_online``; a quantized checkpoint runs as stored.
* CUDA graphs: ``--cuda-graph-max-bs-decode`` the per-rank batch, or ``--cuda-graph-backend-decode disabled``
  (0.5.23 deprecates ``--disable-cuda-graph`` for the per-phase backends); none on a disaggregated prefill
  server, which runs no decode steps (SGLang's resolution turns its decode graphs off).
* ``--mem-fraction-static`` is the fraction of GPU memory for weights and the KV pool; the rest holds
  activations and graphs. The launch writes the priced ``gpu_memory_utilization``, which in the cost model
  also covers activations and graphs (a difference, listed).
* disaggregated plans: ``--disaggregation-mode prefill|decode`` with the NIXL transfer backend, behind
  ``sglang_router``'s PD mode.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.serving.plan import InstanceArrays, ServingPlanArrays

from .emission import Emission
from .serving_knobs import (ServingKnobs, checkpoint_mismatch, command_text, header, heads_not_divisible,
                            online_fp4_without_fp4_gpu, over_phases)

ENGINE = "sglang"
TESTED_VERSION = "SGLang 0.5.23"
DIST_INIT_PORT = "5000"
"""Port of ``--dist-init-addr`` for a multi-node instance (SGLang's documented example)."""
TRANSFER_BACKEND = "nixl"
"""``--disaggregation-transfer-backend`` (0.5.23 choices: mooncake, nixl, ascend, fake, mori, mooncake_tcp)."""
ONLINE_QUANTIZATION = {"fp8": "fp8", "fp4": "nvfp4_online"}
"""``--quantization`` that quantizes a BF16 checkpoint on load to each precision (0.5.23's choices)."""
SPECULATIVE_ALGORITHMS = {"mtp": "NEXTN", "eagle3": "EAGLE3", "ngram": "NGRAM"}
"""``--speculative-algorithm`` of each speculative method (0.5.23's builtins: EAGLE, EAGLE3, NEXTN, STANDALONE,
NGRAM, DFLASH, DSPARK, UNO)."""

RULES: dict[str, str] = {
    "sglang_tp_divides_heads": "SGLang shards the attention heads over tp_size / attn_dp ranks: they must divide",
    "sglang_checkpoint_precision": "SGLang runs a quantized checkpoint in its own format (no re-quantizing or "
                                   "de-quantizing on load): the weight precision must be the checkpoint's",
    "sglang_online_fp4": "SGLang's online NVFP4 quantization (--quantization nvfp4_online, FlashInfer CuteDSL MoE) "
                         "needs a Blackwell GPU",
}
"""SGLang 0.5.23's start-up rules and what it cannot express, enforced by the serving search (name -> sentence)."""


def instance_violations(model: ModelSpec, instances: InstanceArrays, gpu: Any = None) -> dict[str, np.ndarray]:
    """For each of :data:`RULES`, True where SGLang refuses the instance layout or cannot run it as priced."""
    return {
        "sglang_tp_divides_heads": heads_not_divisible(instances, model),
        "sglang_checkpoint_precision": checkpoint_mismatch(instances, model),
        "sglang_online_fp4": online_fp4_without_fp4_gpu(instances, model, gpu),
    }


def violations(model: ModelSpec, plans: ServingPlanArrays, gpu: Any = None) -> dict[str, np.ndarray]:
    """:func:`instance_violations` over both phases of every plan."""
    return over_phases(instance_violations, model, plans, gpu)


def _speculative_lines(knobs: ServingKnobs) -> list[list[str]]:
    spec = knobs.speculative
    if spec is None:
        return []
    line = ["--speculative-algorithm", SPECULATIVE_ALGORITHMS[spec.method]]
    if spec.method == "eagle3":
        line += ["--speculative-draft-model-path", str(spec.draft_model)]
    # a chain of k drafts: k steps of top-1, k + 1 tokens verified (SGLang forces
    # num_draft_tokens = num_steps + 1 when topk == 1, arg_groups/speculative_hook.py)
    line += ["--speculative-num-steps", str(spec.draft_tokens), "--speculative-eagle-topk", "1",
             "--speculative-num-draft-tokens", str(spec.draft_tokens + 1)]
    return [line]


def _lines(knobs: ServingKnobs) -> list[list[str]]:
    width = knobs.tp * knobs.attn_dp
    lines = [["python", "-m", "sglang.launch_server", "--model-path", knobs.model_path],
             ["--tp-size", str(width), "--pp-size", str(knobs.pp)]]
    if knobs.attn_dp > 1:
        lines[-1] += ["--attn-dp-size", str(knobs.attn_dp)]
    if knobs.model.is_moe and knobs.ep > 1:
        lines[-1] += ["--ep-size", str(knobs.ep)]
    lines.append(["--max-running-requests", str(knobs.max_num_seqs * knobs.attn_dp), "--chunked-prefill-size",
                  str(knobs.max_num_batched_tokens * knobs.attn_dp), "--max-prefill-tokens",
                  str(knobs.max_num_batched_tokens)])
    lines.append(["--context-length", str(knobs.max_model_len), "--mem-fraction-static",
                  f"{knobs.gpu_memory_utilization:g}"])
    lines.append(["--kv-cache-dtype", "fp8_e4m3" if knobs.kv_dtype == "fp8" else "auto"])
    if knobs.online_quantization:
        lines.append(["--quantization", ONLINE_QUANTIZATION[knobs.online_quantization]])
    if knobs.role != "prefill":  # a prefill server runs no decode steps (SGLang turns their graphs off)
        lines.append(["--cuda-graph-max-bs-decode", str(knobs.max_num_seqs)] if knobs.cuda_graphs
                     else ["--cuda-graph-backend-decode", "disabled"])
    if not knobs.enable_prefix_caching:
        lines.append(["--disable-radix-cache"])
    lines += _speculative_lines(knobs)
    if knobs.disaggregated:
        lines.append(["--disaggregation-mode", knobs.role, "--disaggregation-transfer-backend", TRANSFER_BACKEND])
    if knobs.nodes > 1:
        lines.append(["--nnodes", str(knobs.nodes), "--node-rank", "$NODE_RANK", "--dist-init-addr",
                      f"$MASTER_ADDR:{DIST_INIT_PORT}"])
    return lines


def argv(knobs: ServingKnobs) -> list[str]:
    return [word for line in _lines(knobs) for word in line]


def differences(knobs: ServingKnobs, gpu: Any = None) -> tuple[str, ...]:
    """What SGLang runs differently from the priced plan: the rules this instance breaks, then the rest."""
    broken = instance_violations(knobs.model, knobs.instance_arrays(), gpu)
    notes = [f"cannot run as priced: {RULES[name]}" for name, mask in broken.items() if mask[0]]
    notes.append("--mem-fraction-static covers weights and the KV pool only; SGLang keeps the rest of the GPU for "
                 "activations and CUDA graphs, where the priced gpu_memory_utilization covers them too")
    if knobs.model.is_moe and knobs.ep > 1:
        notes.append("SGLang's default MoE exchange (--moe-a2a-backend none) gathers the tokens to every EP rank and "
                     "reduce-scatters the outputs, where the plan prices an all-to-all dispatch and combine; "
                     "--moe-a2a-backend deepep runs one (DeepEP installed; SGLang then sets ep_size = tp_size)")
    if knobs.pp > 1:
        notes.append(f"SGLang splits --max-running-requests over the {knobs.pp} pipeline micro-batches in flight")
    return tuple(notes)


def emit(knobs: ServingKnobs, gpu: Any = None) -> Emission:
    text = header(TESTED_VERSION, knobs) + "\n" + command_text(_lines(knobs))
    if knobs.role == "decode":
        text += ("\n# in front of them: python -m sglang_router.launch_router --pd-disaggregation "
                 "--prefill http://PREFILL_HOST:30000 --decode http://DECODE_HOST:30000")
    return Emission(framework=ENGINE, tested_version=TESTED_VERSION, argv=tuple(argv(knobs)),
                    differences=differences(knobs, gpu), text=text)
