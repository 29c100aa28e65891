"""Time of one engine step of a serving instance: a decode step (one token for each running request) or
a prefill step (a chunk of prompt tokens), over numpy arrays of instance layouts.

Decode (per step, ``b`` running requests per attention rank, each with ``c`` tokens of context)::

    total = step_overhead + launch + gpu          (an engine without an overlap scheduler)
    total = max(step_overhead + launch, gpu)      (with one: TensorRT-LLM's PyTorch backend, SGLang)
    gpu   = max(hbm, gemm + attention) + tp_comm + ep_comm + pp

* ``step_overhead`` (:attr:`ServingOptions.step_overhead_us` plus
  :attr:`ServingOptions.step_overhead_per_request_us` for each request of the step, both fitted): CPU work
  the GPU waits for in every step (scheduling, input preparation, sampling, output processing).
* ``launch``: the host issuing the step's kernels. Eager (no CUDA graphs): kernels x
  :attr:`ServingOptions.eager_kernel_issue_us`. How host and GPU time compose is the engine's
  (:func:`step_total_s`): they add without an overlap scheduler (measured on Splitwise's eager profile),
  and the longer one sets the step with it. The kernel inventory is the training model's
  (:mod:`cost_model.host`: ATTENTION, MLA_ATTENTION, MLP, MOE_FIXED, one grouped GEMM pair for the
  experts as fused MoE kernels run them) plus one per collective. The count does not depend on TP: each
  TP rank's process issues its own copy at the same time. With graphs: one graph launch per pipeline
  stage and micro-batch, for steps up to the largest captured size (``min(max_num_seqs,
  cuda_graph_max_batch)`` tokens); a larger step (a big decode batch, a prefill chunk) runs eagerly, as
  vLLM's dispatcher does (:meth:`InstancePricing._launch_s`). Graphs are thus never slower than eager at
  equal batch: they only remove host issue.
* ``hbm``: bytes the step must stream at the achieved HBM bandwidth (``hbm_GBps x hbm_efficiency``, the
  preset's efficiencies times the serving calibration's family departures, :func:`options.fitted_gpu`):
  every weight it touches (for MoE only the experts that received a token: of E experts with top-k
  routing, T tokens touch E (1 - (1 - k/E)^T) in expectation, uniform routing), the KV cache of each
  request (sliding-window layers up to the window), the new tokens' KV writes and the element-wise
  traffic (norms and residual adds: 10 h bytes per token and layer, as :mod:`cost_model.compute`).
* ``gemm``: every projection, MLP and expert GEMM at M = tokens of the step, priced by the training
  model's roofline (:class:`cost_model.compute._Pricer`: wave quantization, per-kernel overhead, the
  GEMM's own operand bytes; rows padded to the tensor cores' smallest block, so a MoE expert with few
  tokens costs a whole block: why MoE prefill wants large token batches; decode-sized GEMMs split K to
  fill the SMs, :func:`split_k`), each layer part at its own MMA precision
  (:func:`cost_model.serving.rules.part_gemm_precision`: a quantized checkpoint's unquantized parts in BF16,
  MXFP4 experts with MXFP8 activations on FP4 tensor cores); ``attention``: the attention kernels' FLOPs at the training model's
  flash rate (:func:`cost_model.compute.flash_forward_rate`: head dim, kernel length, causal diagonal).
  ``max(hbm, gemm + attention)`` is the roofline of the whole step: it can neither stream faster than HBM
  nor compute faster than its kernels.
  ``attention`` is the attention kernels' own roofline: their FLOPs at the flash rate or the cached KV
  they read at the achieved HBM bandwidth, whichever is longer (:meth:`InstancePricing._attention_kernel_s`):
  the kernels of a step run one after another, so a long-context decode step pays its weight-streaming
  GEMMs and then its KV-streaming attention.
* ``tp_comm``: two all-reduces per layer over the TP group (after attention and after the MLP; a MoE
  layer without EP reduces its experts' output over the whole ``moe_tp`` group), plus the embedding's
  all-reduce and the logits' all-gather, priced by :class:`hardware.collectives.CollectiveCost`. At
  decode the messages are a few KiB, so each costs its latency term: ring 2(n-1) alpha, tree 2(g-1)
  alpha, NVLS 2 alpha, which never shrinks as TP grows while the weight read per GPU halves with each
  doubling. This is how Splitwise's Llama 2 70B decode on H100 does not improve from TP4 to TP8 (29.7 vs
  29.8 ms, serving_runs.csv): at batch 1 the per-step floor rather than the weight read sets the step.
  Without CUDA graphs that floor is the host's issue of ~1,100 kernels, the same at every TP degree; with
  graphs it is the collectives' latency and the kernels' fixed costs, and TP8 does gain on TP4.
* ``ep_comm``: DeepEP-style dispatch and combine per MoE layer over the ``ep x moe_tp`` ranks, each rank
  sending one message per (token, expert) pair (DeepEP's low-latency kernels do not merge a token's
  experts on one rank: ``csrc/kernels/internode_ll.cu``): dispatch ``16 + h + 4 h / 128`` bytes (an int4
  header, FP8 hidden, an fp32 scale per 128 channels) for FP8/FP4 models, ``16 + 2 h`` for BF16 ones;
  combine ``2 h`` (BF16). Each kernel costs :attr:`ServingOptions.ep_kernel_fixed_us` plus its bytes as a
  :class:`hardware.collectives.CollectiveCost` all-to-all (NVLink inside the scale-up domain, the NIC
  across it): DeepEP's published kernel times (the option's docstring).
* MoE load imbalance: the step waits for the busiest EP rank. Of T tokens per instance routed to k of E
  experts spread over ``ep`` ranks, the busiest rank receives f T k / ep token-expert pairs, f from
  :func:`cost_model.serving.queueing.moe_max_load_factor` (Raab & Steger), large when few tokens per rank
  (decode) and near 1 for prefill's thousands: its expert GEMMs, the experts it touches (as f T tokens would
  touch under uniform routing) and the dispatch/combine bytes it receives scale with f.
* ``pp``: pipeline hand-offs (send/recv of the micro-batch's hidden states, one per stage).

Pipeline parallelism: ``b`` requests per attention rank run as ``pp`` micro-batches of ``b/pp``; each
stage processes all of them in turn, so a request's next token comes after ``pp`` stage passes of a
micro-batch, i.e. one pass of the whole model (per TP rank) at ``b/pp`` requests. Decode TPOT is thus
priced as the whole model at ``b/pp`` on one TP column, and the instance makes ``b`` tokens per
attention rank per ``total_s``.

Prefill (``t`` new tokens per attention rank; each request's chunk of ``r`` tokens attends to its ``c``
cached tokens and causally to itself: t (c + r/2) query-key pairs per layer) uses the same terms; its
GEMMs are compute bound and its all-reduces bandwidth bound.

Speculative decoding: a verify step runs ``k + 1`` tokens per request through the GEMMs and attention
(``decode_step(..., verify_tokens=k + 1)``) while reading the weights and each request's KV cache once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from hardware.collectives import Collective, CollectiveCost
from hardware.schema import ClusterSpec

from ..activations import ACT_BYTES, GEMM_INPUT_BYTES
from ..compute import _Pricer, flash_forward_rate
from ..host import ATTENTION, EXPERT_GROUPED_GEMMS, MLA_ATTENTION, MLP, MOE_FIXED
from ..model_spec import QUANTIZABLE_PARTS, ModelSpec
from .kv_cache import kv_bytes_per_token_per_layer_per_rank, kv_heads_per_rank
from .memory import layer_weights, part_weight_bytes
from .options import ServingOptions, fitted_gpu
from .plan import WEIGHT_PRECISIONS, InstanceArrays
from .queueing import expected_block_padded_rows, moe_max_load_factor
from .rules import part_gemm_precision, weight_precision_mode

AMPERE_MMA_ROWS = 16
"""Row block of a tensor-core GEMM on GPUs before Hopper (no FP8 tensor cores): Ampere's ``mma.sync``
is m16n8k16 (PTX ISA, "Warp-level Matrix Multiply-Accumulate Instructions"); Hopper's warpgroup MMA
needs 64 (:attr:`ServingOptions.gemm_min_rows`)."""

BOTTLENECKS = ("host", "hbm", "compute", "tp_latency", "ep_comm")
"""Labels of :attr:`StepTimes.bottleneck`: the largest term of the step."""

ELEMENTWISE_BYTES_PER_HIDDEN = 10 * ACT_BYTES
"""Element-wise HBM traffic per token and layer, per hidden unit: two norms (read and write h) and two
residual adds (read two, write one), 4e h + 6e h as :func:`cost_model.compute._attention` counts them."""

DEEPEP_HEADER_BYTES = 16.0
"""Header of a DeepEP low-latency dispatch message (one ``int4``: source token and metadata;
``num_bytes_per_msg = sizeof(int4) + ...``, ``csrc/kernels/internode_ll.cu``)."""
FP8_SCALE_BLOCK = 128
"""Channels per fp32 scale of an FP8 dispatch message (DeepEP ``kNumPerChannels = 128``)."""

WEIGHT_ONLY_DEQUANT_OVERHEAD = 0.10
"""Extra compute time of a weight-only GEMM over a BF16 one where the GEMM is compute bound: Marlin
(Frantar et al. 2024, "MARLIN: Mixed-Precision Auto-Regressive Parallel Inference on Large Language
Models", arXiv:2408.11743, the batch sweep of its GEMM benchmark) stays within 5% of the ideal 3.87x
over FP16 up to batch 32 (the dequantization hidden under the weight stream) and is about 10% slower than
FP16 at prefill batches of 1,024 and more, where it recomputes each weight's dequantization per row tile."""

HEAD_KERNELS = 4
"""Kernels after the last layer: final norm, LM head GEMM, logits gather, sampling."""

MOE_PERMUTE_ROW_READS = 1
"""BF16 rows of the hidden size a fused MoE reads per (token, expert) pair before its first GEMM: the permute
reads the token's row to copy it, quantized, into the pair's slot (TensorRT-LLM's CUTLASS MoE runner,
``cpp/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/moe_kernels.cu``: ``expandInputRowsKernel``, "we will have
to duplicate some rows in the input matrix"; vLLM's fused MoE permutes the same way). See
:meth:`InstancePricing._moe_elementwise_bytes`."""

MOE_FINALIZE_ROW_PASSES = 2
"""BF16 rows of the hidden size the combine of a fused MoE moves per (token, expert) pair: the pair's scaled
output is added into its token's row, a read and a write of that row. TensorRT-LLM fuses the unpermute-and-sum
into the second GEMM's epilogue by default (``MoeConfig.disable_finalize_fusion`` False,
``tensorrt_llm/llmapi/llm_args.py``), and that epilogue reduces every pair's row into the zeroed output with
global atomic adds (``cpp/tensorrt_llm/cutlass_extensions/include/cutlass_extensions/epilogue/collective/
epilogue_moe_finalize.hpp`` @5b618cfd: ``EpilogueMoeFusedFinalize``, ``CopyAtomR2G`` =
``SM90_RED_ADD_NOFTZ_BF16x2_V4``, a read-modify-write of the row), built "assuming cooperative kernel
schedule": on Hopper, whose grouped MoE GEMMs run only the cooperative schedule, the consumer warp groups run it
after their main loop, so its traffic is not hidden under the tensor cores. Blackwell's separate epilogue warps
can overlap it with the next tile's MMAs; it is priced the same way there, as a pass in the MoE kernel chain (an
upper bound where the second GEMM stays compute bound with it). vLLM's ``moe_sum`` reads each pair's row and
writes each token's once (the same bytes within 1/top_k)."""


@dataclass
class StepTimes:
    """Seconds of one engine step and of its parts, arrays over instances (broadcast with the inputs).

    ``total_s`` is not the sum of the parts: the host's issue overlaps the GPU and HBM streaming overlaps
    the kernels (module docstring)."""

    host_s: np.ndarray
    """Host time: step overhead plus kernel issue (eager) or graph launch."""
    hbm_s: np.ndarray
    """Weights touched, KV cache read and written, element-wise traffic at achieved HBM bandwidth."""
    gemm_s: np.ndarray
    """GEMMs on the wave-quantised roofline."""
    attention_s: np.ndarray
    """Attention kernels' FLOPs at the attention rate."""
    tp_comm_s: np.ndarray
    ep_comm_s: np.ndarray
    pp_s: np.ndarray
    total_s: np.ndarray
    bottleneck: np.ndarray
    """Largest term, one of :data:`BOTTLENECKS`."""
    gemm_flops: np.ndarray
    """FLOPs of the step's GEMMs on one GPU (the weights' 2 x tokens x parameters, as
    :mod:`cost_model.flops` counts them, split over the ranks)."""
    gpu_s: np.ndarray = None
    """The GPU's own time: ``max(hbm, gemm + attention) + tp_comm + ep_comm + pp`` (what a step costs
    when the host keeps ahead)."""
    launch_s: np.ndarray = None
    """The host's kernel issue of the step: a graph replay, or every kernel eagerly (past the largest
    captured size, or with graphs off)."""


SPLIT_K_MIN_DEPTH = 256
"""Shortest slice of the reduction dimension a split-K GEMM gives one thread block (CUTLASS's split-K and
stream-K kernels keep a few 64-deep main-loop stages per slice)."""


def split_k(pricer: _Pricer, rows, n, k, count=1.0) -> np.ndarray:
    """Slices of K a decode-sized GEMM is split into so that its output tiles fill the GPU.

    With a few rows (decode: M = the batch) a GEMM has ceil(M/128) x ceil(N/256) output tiles, often fewer
    than the SMs; cuBLAS and CUTLASS then split the reduction dimension over more thread blocks (split-K,
    or stream-K: Osama et al. 2023, "Stream-K: Work-centric Parallel Decomposition for Dense Matrix-Matrix
    Multiplication on the GPU", PPoPP) and add the partial sums. Slices: as many as fill one wave of
    SMs, at most K / :data:`SPLIT_K_MIN_DEPTH`. The training pricer prices each slice as a GEMM of
    depth K/s (same FLOPs; each slice writes its partial output, the reduction's traffic)."""
    if not pricer.num_sms:
        return np.ones(np.broadcast(np.asarray(rows), np.asarray(n), np.asarray(k)).shape)
    tiles = np.ceil(np.asarray(rows, dtype=np.float64) / pricer.tile_m) \
        * np.ceil(np.asarray(n, dtype=np.float64) / pricer.tile_n) \
        * np.maximum(np.asarray(count, dtype=np.float64), 1e-12)
    fill = np.floor(pricer.num_sms / np.maximum(tiles, 1.0))
    depth = np.floor(np.asarray(k, dtype=np.float64) / SPLIT_K_MIN_DEPTH)
    return np.maximum(1.0, np.minimum(fill, depth))


def step_total_s(overhead_s, launch_s, gpu_s, overlap_scheduler: bool):
    """Seconds of one engine step from its host work (``overhead_s``: scheduling, inputs, per-request work;
    ``launch_s``: kernel issue or graph launch) and its GPU time.

    * With an overlap scheduler (TensorRT-LLM's PyTorch backend, on by default: "at step n the system
      launches GPU computation for step n+1 without waiting for CPU tasks from step n", nvidia.github.io/
      TensorRT-LLM "Overlap Scheduler"; SGLang v0.4's zero-overhead batch scheduler, LMSYS blog 2024-12-04)
      the host prepares and issues step n+1 while the GPU runs step n: the step takes the longer of the two.
    * Without one, the step's host work and its GPU work add. Splitwise's eager Llama 2 70B decode shows it
      (serving_runs.csv, batch 1): from TP2 to TP4 the step falls by the weight read TP4 saves (H100 37.3 ->
      29.5 ms against 14.5 -> 7.3 ms of weights at 0.72 x 3.35 TB/s; A100 ~57 -> ~44 ms against 23.5 ->
      11.7 ms), which a host-bound step whose issue hid the GPU (``max``) would not do. With CUDA graphs the
      issue is one graph launch (tens of us), so the sum is the GPU time plus the CPU work."""
    if overlap_scheduler:
        return np.maximum(overhead_s + launch_s, gpu_s)
    return overhead_s + launch_s + gpu_s


def experts_touched(num_experts: int, top_k: int, tokens) -> np.ndarray:
    """Expected distinct experts ``tokens`` tokens route to, each picking ``top_k`` of ``num_experts``
    uniformly: E (1 - (1 - k/E)^T) (each expert is missed by one token with probability 1 - k/E)."""
    tokens = np.asarray(tokens, dtype=np.float64)
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


class InstancePricing:
    """Step times of N instance layouts of one model on one cluster (see the module docstring)."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, instances: InstanceArrays,
                 options: ServingOptions | None = None):
        self.model = model
        self.cluster = cluster
        self.instances = instances
        self.options = options = options or ServingOptions()
        gpu, topology = fitted_gpu(cluster.gpu, options.gpu_departures), cluster.topology
        n = len(instances)
        # One pricer per weight precision; its rates become per-instance arrays.
        pricers = [self._weight_pricer(model, gpu, code, name, options) for code, name in enumerate(WEIGHT_PRECISIONS)]
        codes = instances.weight_precision
        self._gemm_flops_per_s = np.array([p.gemm_flops_per_s for p in pricers])[codes]
        # Each layer part's GEMMs at its own MMA precision (rules.part_gemm_precision): (rate, operand bytes).
        self._part_rates = {}
        for part in QUANTIZABLE_PARTS:
            part_pricers = [self._weight_pricer(model, gpu, code, name, options, part)
                            for code, name in enumerate(WEIGHT_PRECISIONS)]
            rates = np.array([p.gemm_flops_per_s for p in part_pricers])[codes]
            if part == "experts":  # fused-MoE grouped GEMMs reach a share of the dense rate (ServingOptions)
                rates = rates * options.moe_gemm_share
            self._part_rates[part] = (rates, np.array([p.in_bytes for p in part_pricers])[codes])
        # Bytes per element of the experts' GEMM inputs (the permuted rows and the second GEMM's input): the
        # MMA precision's, BF16 where the weights run weight-only (BF16 activations).
        act = [GEMM_INPUT_BYTES["bf16" if weight_precision_mode(gpu, name) == "weight_only"
                                else part_gemm_precision(model, gpu, name, "experts")]
               for name in WEIGHT_PRECISIONS]
        self._expert_input_bytes = np.array(act)[codes]
        self._pricer = pricers[0]
        self._head_pricer = _Pricer.for_precision(gpu, "bf16", options.cost)  # LM head and router stay BF16
        self.hbm_bytes_per_s = self._pricer.hbm_bytes_per_s
        self.weights = layer_weights(model, instances)
        self.kv_bytes_per_token_per_layer = kv_bytes_per_token_per_layer_per_rank(model, instances)

        tp, ep = instances.tp, np.maximum(instances.ep, 1)
        moe_group = np.maximum(instances.moe_tp, 1) * ep
        domain = topology.scaleup_domain_gpus
        self._tp_all_reduce = CollectiveCost(topology, Collective.ALL_REDUCE, tp, np.minimum(tp, domain))
        self._tp_all_gather = CollectiveCost(topology, Collective.ALL_GATHER, tp, np.minimum(tp, domain))
        self._moe_all_reduce = CollectiveCost(topology, Collective.ALL_REDUCE, moe_group, np.minimum(moe_group, domain))
        self._ep_all_to_all = CollectiveCost(topology, Collective.ALL_TO_ALL, moe_group, np.minimum(moe_group, domain))
        same_domain = instances.gpus <= domain
        self._pp_send = CollectiveCost(topology, Collective.SEND_RECV, np.where(instances.pp > 1, 2, 1),
                                       np.where((instances.pp > 1) & same_domain, 2, 1))
        self.kernels_per_pass = self._kernels_per_pass()
        self.fixed_kernels_s = self._non_gemm_kernels_per_pass() * options.cost.kernel_overhead_us * 1e-6
        assert len(self.kernels_per_pass) == n

    # --- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _weight_pricer(model: ModelSpec, gpu, code: int, name: str, options: ServingOptions,
                       part: str | None = None) -> _Pricer:
        """GEMM pricing of weights in precision ``name`` (of one layer ``part`` when given: its MMA precision is
        :func:`cost_model.serving.rules.part_gemm_precision`'s, its operands its stored bytes): on the GPU's own
        tensor cores where it has them;
        weight-only where it has not (:func:`cost_model.serving.rules.weight_precision_mode`): the weights
        stream at their stored bytes (the GEMM's operand reads: the stored format's bytes per weight, as
        :func:`cost_model.serving.memory.part_weight_bytes` counts them), the MMAs run at the BF16 rate, slowed
        by :data:`WEIGHT_ONLY_DEQUANT_OVERHEAD` for the dequantization (visible only where the GEMM is
        compute bound: a decode GEMM streams its weights and hides it). The activation operand is read at the
        same bytes: exact for the weights that dominate decode, an undercount only for compute-bound GEMMs."""
        if part is not None:
            compute = part_gemm_precision(model, gpu, name, part)
            if compute != name:  # a BF16 part of a quantized checkpoint, or MXFP4 weights with MXFP8 activations
                pricer = _Pricer.for_precision(gpu, compute, options.cost)
                pricer.in_bytes = float(part_weight_bytes(model, [code], part)[0])
                return pricer
        if weight_precision_mode(gpu, name) != "weight_only":
            return _Pricer.for_precision(gpu, name, options.cost)
        pricer = _Pricer.for_precision(gpu, "bf16", options.cost)
        parts = QUANTIZABLE_PARTS if part is None else (part,)
        stored = min(float(part_weight_bytes(model, [code], p)[0]) for p in parts)
        pricer.gemm_flops_per_s = pricer.gemm_flops_per_s / (1.0 + WEIGHT_ONLY_DEQUANT_OVERHEAD)
        pricer.in_bytes = stored
        return pricer

    def _kernels_per_pass(self) -> np.ndarray:
        """Kernels one pass of a token batch through the whole model issues (module docstring)."""
        m, inst = self.model, self.instances
        tp_collectives = (inst.tp > 1).astype(float)
        attention = (MLA_ATTENTION if m.is_mla else ATTENTION)
        attention_kernels = attention.gemms + attention.other + tp_collectives
        dense = attention_kernels + MLP.gemms + MLP.other + tp_collectives
        moe_collectives = np.where(inst.ep > 1, 2.0, (inst.moe_tp > 1).astype(float))
        moe = attention_kernels + MOE_FIXED.other + EXPERT_GROUPED_GEMMS[0] + moe_collectives
        if m.shared_expert_ffn_hidden_size:
            moe = moe + MLP.gemms + MLP.other
        head = HEAD_KERNELS + 1 + 2 * tp_collectives  # + embedding gather, its all-reduce and the logits gather
        pp_sends = np.where(inst.pp > 1, inst.pp, 0)
        return m.num_dense_layers * dense + m.num_moe_layers * moe + head + pp_sends

    def _non_gemm_kernels_per_pass(self) -> np.ndarray:
        """Kernels of one pass that are not GEMMs nor collectives (norms, rotary, the attention core, activation,
        routing and permutation): each costs the GPU at least a kernel's fixed time, its launch and tail
        (:attr:`cost_model.options.CostOptions.kernel_overhead_us`, which every GEMM already pays in
        :meth:`cost_model.compute._Pricer.gemm`), even inside a CUDA graph, where only the host's issue goes.
        The inventory is :meth:`_kernels_per_pass`'s."""
        m, inst = self.model, self.instances
        attention = (MLA_ATTENTION if m.is_mla else ATTENTION).other
        dense = attention + MLP.other
        moe = attention + MOE_FIXED.other + (MLP.other if m.shared_expert_ffn_hidden_size else 0)
        head = HEAD_KERNELS  # the head's kernels but its GEMM, plus the embedding gather: as many
        return np.full(len(inst), m.num_dense_layers * dense + m.num_moe_layers * moe + head, dtype=np.float64)

    def _shaped(self, *values):
        """Inputs as float arrays, and a function giving per-instance constants their broadcast shape."""
        arrays = [np.asarray(v, dtype=np.float64) for v in values]
        ndim = max([a.ndim for a in arrays] + [1])
        if ndim > 2:
            raise ValueError("step inputs broadcast against (N,) or (N, K) arrays only")

        def col(x):
            x = np.asarray(x, dtype=np.float64)
            return x.reshape(x.shape + (1,) * (ndim - x.ndim)) if x.ndim == 1 else x

        return arrays, col

    def _pricer_for(self, col, part: str):
        """The pricer of one layer part's GEMMs, its rate and operand bytes per instance."""
        pricer = copy.copy(self._pricer)
        rate, in_bytes = self._part_rates[part]
        pricer.gemm_flops_per_s = col(rate)
        pricer.in_bytes = col(in_bytes)
        return pricer

    def _layer_gemms(self, tokens, col, absorbed: bool):
        """GEMM seconds and FLOPs of one dense layer and of one MoE layer, and the expert weight bytes a
        MoE layer reads, at ``tokens`` per attention rank. A batched or grouped GEMM (MLA's per-head
        absorption, a fused MoE kernel over the touched experts) is one kernel: one kernel overhead, not
        one per group."""
        m, inst = self.model, self.instances
        p = self._pricer_for(col, "attention")
        h = m.hidden_size
        tp = col(inst.tp)
        heads = m.num_attention_heads / tp
        flops = {"dense": 0.0, "moe": 0.0}
        min_rows = float(self.options.gemm_min_rows if self.cluster.gpu.peak_tflops_fp8 else AMPERE_MMA_ROWS)
        compute_pricers = {}

        def compute_only(pricer):
            """The pricer with unbounded HBM: a GEMM's compute time (and kernel overhead) alone."""
            if id(pricer) not in compute_pricers:
                twin = copy.copy(pricer)
                twin.hbm_bytes_per_s = np.inf
                compute_pricers[id(pricer)] = twin
            return compute_pricers[id(pricer)]

        def gemm(pricer, rows, n, k, count=1.0, parts=("dense", "moe"), padded=None):
            count = np.asarray(count, dtype=np.float64)
            splits = split_k(pricer, rows, n, k, count)
            depth = np.asarray(k, dtype=np.float64) / splits
            rows_ = np.asarray(rows, dtype=np.float64)
            seconds, _ = pricer.gemm(rows, n, depth, count * splits)
            # The tensor cores compute whole row blocks: a GEMM (or each expert of a grouped one) with
            # fewer rows than the smallest block computes the block (ServingOptions.gemm_min_rows), though
            # it reads and writes only its rows: the padded compute alone bounds it from below.
            if padded is None:
                padded = np.where(rows_ > 0, np.ceil(rows_ / min_rows) * min_rows, 0.0)
            padded_compute_s, _ = compute_only(pricer).gemm(padded, n, depth, count * splits)
            seconds = np.maximum(seconds, padded_compute_s)
            seconds = np.where((count > 0) & (rows_ > 0), seconds - (count * splits - 1.0) * pricer.overhead_s, 0.0)
            f = 2.0 * np.asarray(rows, dtype=np.float64) * n * np.asarray(k, dtype=np.float64) * count
            for part in parts:
                flops[part] = flops[part] + f
            return seconds

        if m.is_mla:
            q_in = m.q_lora_rank or h
            attention = gemm(p, tokens, m.kv_lora_rank + m.qk_rope_head_dim, h)            # kv_a (replicated)
            if m.q_lora_rank:
                attention = attention + gemm(p, tokens, m.q_lora_rank, h)                 # q_a (replicated)
            attention = attention + gemm(p, tokens, heads * m.q_head_dim, q_in)            # q_b
            if absorbed:
                # Decode multiplies the query's nope part into the latent (W_UK) and the attention output
                # back out of it (W_UV) per head (DeepSeek-V2 report section 2.1.2, weight absorption).
                attention = attention + gemm(p, tokens, m.kv_lora_rank, m.qk_nope_head_dim, count=heads) \
                    + gemm(p, tokens, m.v_head_dim, m.kv_lora_rank, count=heads)
            else:
                attention = attention + gemm(p, tokens, heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank)
        else:
            kv_heads = col(kv_heads_per_rank(m, inst.tp))
            attention = gemm(p, tokens, (heads + 2 * kv_heads) * m.head_dim, h)
        attention = attention + gemm(p, tokens, h, heads * m.v_dim)                          # output projection
        fc1 = 2 if m.gated_mlp else 1
        dense = attention
        if m.num_dense_layers:
            width = m.ffn_hidden_size / tp
            pd = self._pricer_for(col, "dense_mlp")
            dense = dense + gemm(pd, tokens, fc1 * width, h, parts=("dense",)) \
                + gemm(pd, tokens, h, width, parts=("dense",))
        moe = attention
        expert_bytes = 0.0
        if m.is_moe:
            moe = moe + gemm(self._head_pricer, tokens, m.num_experts, h, parts=("moe",))      # router
            if m.shared_expert_ffn_hidden_size:
                width = m.shared_expert_ffn_hidden_size / tp
                ps = self._pricer_for(col, "shared_experts")
                moe = moe + gemm(ps, tokens, fc1 * width, h, parts=("moe",)) + gemm(ps, tokens, h, width, parts=("moe",))
            ep = col(np.maximum(inst.ep, 1))
            # The busiest EP rank sets the layer: it receives as many pairs as f x the instance's tokens would
            # give a mean rank, and touches the experts they would (module docstring).
            busiest = self._busiest_rank_tokens(tokens, col)
            touched = experts_touched(m.num_experts, m.experts_per_token, busiest) / ep
            pairs = busiest * m.experts_per_token / ep           # token-expert pairs on the busiest EP rank
            per_expert = np.where(touched > 0, pairs / np.maximum(touched, 1e-12), 0.0)
            # Each touched expert's rows padded to whole blocks, over the spread of its count (Poisson with mean
            # pairs per local expert): more than the padding of the mean count (queueing.expected_block_padded_rows).
            padded = expected_block_padded_rows(pairs * ep / m.num_experts, min_rows)
            width = m.moe_ffn_hidden_size / col(np.maximum(inst.moe_tp, 1))
            pe = self._pricer_for(col, "experts")
            moe = moe + gemm(pe, per_expert, fc1 * width, h, count=touched, parts=("moe",), padded=padded) \
                + gemm(pe, per_expert, h, width, count=touched, parts=("moe",), padded=padded)
            expert_bytes = touched * col(self.weights.expert_bytes)
        return dense, moe, expert_bytes, flops

    def _moe_elementwise_bytes(self, tokens, col) -> np.ndarray:
        """HBM bytes one MoE layer's permute and activation kernels move on the busiest EP rank at ``tokens``
        per attention rank (0 for a dense model).

        A fused MoE runs, around its two grouped GEMMs, memory-bound passes over every (token, expert) pair
        it computes (TensorRT-LLM ``moe_kernels.cu``: ``expandInputRowsKernel``, then the activation kernel,
        then the second GEMM's finalize epilogue): per pair the permute reads the token's BF16 row
        (:data:`MOE_PERMUTE_ROW_READS`) and writes it in the GEMM input precision (h x q), the activation reads
        the first GEMM's output (fc1 x w in BF16: gate and up) and writes the second GEMM's input (w x q), and
        the finalize adds the pair's output into its token's BF16 row, reading and writing it
        (:data:`MOE_FINALIZE_ROW_PASSES`). w is the expert width per ``moe_tp`` rank; the GEMMs' own operands
        are the GEMM pricer's. These passes run one after another with the GEMMs, so their time adds to the
        step's kernel chain (per-kernel roofline, :meth:`_attention_kernel_s`): a top-8 model (Qwen3-235B:
        33.9 KB a pair at NVFP4) moves 8 pairs a token, a top-1 model (Llama 4) one."""
        m, inst = self.model, self.instances
        if not m.is_moe:
            return np.zeros_like(np.asarray(tokens, dtype=np.float64))
        ep = col(np.maximum(inst.ep, 1))
        pairs = self._busiest_rank_tokens(tokens, col) * m.experts_per_token / ep
        width = m.moe_ffn_hidden_size / col(np.maximum(inst.moe_tp, 1))
        fc1 = 2 if m.gated_mlp else 1
        q = col(self._expert_input_bytes)
        h = m.hidden_size
        per_pair = (MOE_PERMUTE_ROW_READS + MOE_FINALIZE_ROW_PASSES) * h * ACT_BYTES + h * q \
            + fc1 * width * ACT_BYTES + width * q
        return pairs * per_pair

    def _imbalance(self, tokens, col) -> np.ndarray:
        """Busiest EP rank's routed pairs over the mean at ``tokens`` per attention rank (1 without EP)."""
        inst = self.instances
        return moe_max_load_factor(tokens * col(inst.attn_dp), self.model.experts_per_token,
                                   col(np.maximum(inst.ep, 1)))

    def _busiest_rank_tokens(self, tokens, col) -> np.ndarray:
        """Instance tokens whose uniform routing gives a mean EP rank the busiest rank's load."""
        return tokens * col(self.instances.attn_dp) * self._imbalance(tokens, col)

    def _attention_flops(self, queries, context_pairs_full, context_pairs_sliding, col, absorbed: bool):
        """Attention FLOPs over all layers per attention rank: 2 x pairs x heads x (d_qk + d_v)."""
        m = self.model
        heads = m.num_attention_heads / col(self.instances.tp)
        if m.is_mla and absorbed:
            width = (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank   # MQA over the latent
        else:
            width = m.q_head_dim + m.v_dim
        sliding = m.num_sliding_window_layers
        pairs = (m.num_layers - sliding) * context_pairs_full + sliding * context_pairs_sliding
        return 2.0 * pairs * heads * width

    def _collectives(self, tokens, logit_rows, col):
        """TP, EP and PP communication seconds of one pass at ``tokens`` per attention rank, of which
        ``logit_rows`` reach the LM head (every decode token; the last token of each prefilled request)."""
        m, inst = self.model, self.instances
        h = m.hidden_size
        message = tokens * h * ACT_BYTES
        all_reduce = self._tp_all_reduce.time_s(message)
        tp_comm = (2 * m.num_dense_layers + m.num_moe_layers + 1) * all_reduce \
            + self._tp_all_gather.time_s(logit_rows * m.vocab_size * ACT_BYTES)
        ep_comm = np.zeros_like(tp_comm)
        if m.is_moe:
            ep = col(inst.ep)
            gathered = message * col(inst.attn_dp)
            moe_reduce = self._moe_all_reduce.time_s(gathered)
            tp_comm = tp_comm + m.num_moe_layers * np.where(ep > 1, 0.0, moe_reduce)
            # One message per (token, expert) pair, the busiest rank receiving f times the mean (module docstring).
            pairs = tokens / col(inst.tp) * m.experts_per_token * self._imbalance(tokens, col)
            fp8 = col(inst.weight_precision) != WEIGHT_PRECISIONS.index("bf16")
            dispatch_bytes = pairs * (DEEPEP_HEADER_BYTES + np.where(fp8, h + h / FP8_SCALE_BLOCK * 4.0, h * ACT_BYTES))
            combine_bytes = pairs * h * ACT_BYTES
            fixed_s = self.options.ep_kernel_fixed_us * 1e-6
            kernels = self._ep_all_to_all.time_s(dispatch_bytes) + self._ep_all_to_all.time_s(combine_bytes)
            ep_comm = m.num_moe_layers * np.where((ep > 1) & (pairs > 0), 2.0 * fixed_s + kernels, 0.0)
        pp = col(inst.pp)
        pp_s = pp * self._pp_send.time_s(np.where(pp > 1, message, 0.0))
        return tp_comm, ep_comm, pp_s

    def _assemble(self, launch_s, hbm_s, gemm_s, attention_s, compute_s, tp_comm_s, ep_comm_s, pp_s,
                  gemm_flops, requests=0.0, fixed_s=0.0) -> StepTimes:
        """Combine the terms (module docstring). ``compute_s``: the GEMM and attention FLOPs at their
        rates alone, which tells a compute-bound roof ("compute") from a streaming one ("hbm");
        ``requests``: the attention rank's requests in the step, each costing the host
        :attr:`ServingOptions.step_overhead_per_request_us`; ``fixed_s``: the time of the step's kernels that
        are neither GEMMs nor attention, their fixed time (:meth:`_non_gemm_kernels_per_pass`) and the MoE
        permute and activation traffic (:meth:`_moe_elementwise_bytes`), which the GPU spends one after
        another with its GEMMs and attention."""
        overhead_s = (self.options.step_overhead_us + self.options.step_overhead_per_request_us * requests) * 1e-6
        roof_s = np.maximum(hbm_s, gemm_s + attention_s + fixed_s)
        gpu_s = roof_s + tp_comm_s + ep_comm_s + pp_s
        total_s = step_total_s(overhead_s, launch_s, gpu_s, self.options.overlap_scheduler)
        host_s = overhead_s + launch_s
        terms = np.stack(np.broadcast_arrays(host_s, roof_s, tp_comm_s, ep_comm_s))
        labels = np.array(["host", "roof", "tp_latency", "ep_comm"])[np.argmax(terms, axis=0)]
        labels = np.where(labels == "roof", np.where(compute_s > hbm_s, "compute", "hbm"), labels)
        shape = total_s.shape
        b = lambda x: np.broadcast_to(x, shape).astype(np.float64)  # noqa: E731
        return StepTimes(host_s=b(host_s), hbm_s=b(hbm_s), gemm_s=b(gemm_s), attention_s=b(attention_s),
                         tp_comm_s=b(tp_comm_s), ep_comm_s=b(ep_comm_s), pp_s=b(pp_s), total_s=total_s,
                         bottleneck=np.broadcast_to(labels, shape), gemm_flops=b(gemm_flops), gpu_s=b(gpu_s),
                         launch_s=b(launch_s))

    @property
    def eager_launch_s(self) -> np.ndarray:
        """Issuing one pass's kernels from eager PyTorch, per instance (module docstring)."""
        return self.kernels_per_pass * self.options.eager_kernel_issue_us * 1e-6

    @property
    def graph_launch_s(self) -> np.ndarray:
        """Replaying one pass's captured graph (one per pipeline stage), per instance."""
        return self.instances.pp * self.options.graph_launch_us * 1e-6

    @property
    def graph_captured_tokens(self) -> np.ndarray:
        """Largest step (tokens per attention rank, per micro-batch) a captured graph replays: 0 with graphs
        off, else min(max_num_seqs, :attr:`ServingOptions.cuda_graph_max_batch`), the sizes the engine
        captures (vLLM ``max_cudagraph_capture_size``, default 512, capped at ``max_num_seqs``; the memory
        model's graph pool holds the same, :func:`cost_model.serving.memory.instance_memory`)."""
        inst = self.instances
        captured = np.minimum(inst.max_num_seqs, self.options.cuda_graph_max_batch).astype(np.float64)
        return np.where(inst.cuda_graphs > 0, captured, 0.0)

    def _launch_s(self, col, tokens):
        """Host issue of a step of ``tokens`` per micro-batch: a graph replay up to the largest captured size,
        every kernel eagerly beyond it. vLLM's runtime dispatcher replays a graph only for a batch whose
        padded size was captured and otherwise runs the model without one (``vllm/v1/cudagraph_dispatcher.py``,
        runtime mode NONE; docs.vllm.ai "CUDA Graphs" design page), so a 2,048-token mixed or prefill step
        is eager whether graphs are on or off."""
        graphed = np.asarray(tokens, dtype=np.float64) <= col(self.graph_captured_tokens)
        return np.where(graphed, col(self.graph_launch_s), col(self.eager_launch_s))

    def _weight_read_bytes(self, col, expert_bytes):
        """Weights one pass reads per TP rank: every non-expert weight, the touched experts' shards and
        the LM head (embedding rows gathered per token are negligible)."""
        m, w = self.model, self.weights
        dense = m.num_dense_layers * col(w.dense_layer_bytes)
        moe = m.num_moe_layers * (col(w.attention_bytes + w.shared_experts_bytes + w.replicated_bytes) + expert_bytes) \
            if m.is_moe else 0.0
        return dense + moe + col(w.lm_head_bytes)

    # --- the two kinds of step ------------------------------------------------------------------
    def _kv_read_bytes(self, col, requests, context):
        """Cached KV bytes one step's attention kernels read: each request's context once per layer
        (sliding-window layers hold at most the window)."""
        m = self.model
        sliding = m.num_sliding_window_layers
        held = (m.num_layers - sliding) * context + sliding * np.minimum(context, m.sliding_window or 0)
        return requests * held * col(self.kv_bytes_per_token_per_layer)

    def _streamed_bytes(self, col, expert_bytes, requests, tokens, context):
        """HBM bytes of one step: the weights it reads, each request's cached KV, the KV its new tokens write,
        and the element-wise passes over their hidden states."""
        m = self.model
        kv_layer = col(self.kv_bytes_per_token_per_layer)
        return (self._weight_read_bytes(col, expert_bytes)
                + self._kv_read_bytes(col, requests, context)  # KV read, once per request
                + tokens * m.num_layers * kv_layer            # new KV written
                + tokens * m.num_layers * ELEMENTWISE_BYTES_PER_HIDDEN * m.hidden_size)

    def _attention_kernel_s(self, col, attention_flops_s, requests, context):
        """The attention kernels' own roofline: their FLOPs at the attention rate or the cached KV they read
        at the achieved HBM bandwidth, whichever is longer. A step's kernels run one after another on the
        stream (attention between the QKV and output projections of each layer), so a long-context decode
        step pays its weight-streaming GEMMs and then its KV-streaming attention: the roofline holds per
        kernel (Williams, Waterman & Patterson 2009, "Roofline", CACM 52(4): a kernel's time is bound by its
        own operational intensity), not over the sum of the step's bytes and FLOPs, which would let the
        attention's KV stream hide under the GEMMs' compute."""
        return np.maximum(attention_flops_s, self._kv_read_bytes(col, requests, context) / self.hbm_bytes_per_s)

    def decode_step(self, batch, context_tokens, verify_tokens=1) -> StepTimes:
        """One decode step: ``batch`` running requests per attention rank, each with ``context_tokens``
        of KV cache, each adding ``verify_tokens`` tokens (1; k + 1 to verify k drafted tokens)."""
        (batch, context, verify), col = self._shaped(batch, context_tokens, verify_tokens)
        m = self.model
        pp = col(self.instances.pp)
        requests = batch / pp                                   # one micro-batch (module docstring)
        tokens = requests * verify
        dense_s, moe_s, expert_bytes, flops = self._layer_gemms(tokens, col, absorbed=True)
        head_s, head_flops = self._head_pricer.gemm(tokens, m.vocab_size / col(self.instances.tp), m.hidden_size)
        gemm_s = m.num_dense_layers * dense_s + m.num_moe_layers * moe_s + head_s
        gemm_flops = m.num_dense_layers * flops["dense"] + m.num_moe_layers * flops["moe"] + head_flops
        window, sliding = m.sliding_window or 0, m.num_sliding_window_layers
        moe_elementwise_s = m.num_moe_layers * self._moe_elementwise_bytes(tokens, col) / self.hbm_bytes_per_s
        hbm_s = self._streamed_bytes(col, expert_bytes, requests, tokens, context) / self.hbm_bytes_per_s \
            + moe_elementwise_s
        # Each of the verify tokens attends to the context (and the drafted tokens before it).
        pairs_full = tokens * (context + (verify - 1) / 2)
        pairs_sliding = tokens * np.minimum(context + (verify - 1) / 2, window) if sliding else 0.0
        # A decode kernel (split-KV, FlashDecoding / FlashInfer) spreads each request's context over the SMs:
        # its length is the context, and one query row per request wastes no causal diagonal.
        rate = flash_forward_rate(self.model, self._pricer, self.options.cost, np.maximum(context, 1.0))
        attention_flops_s = self._attention_flops(tokens, pairs_full, pairs_sliding, col, absorbed=True) / rate
        attention_s = self._attention_kernel_s(col, attention_flops_s, requests, context)
        tp_comm_s, ep_comm_s, pp_s = self._collectives(tokens, tokens, col)
        compute_s = gemm_flops / col(self._gemm_flops_per_s) + attention_flops_s
        # A decode graph is captured per batch of requests (each verifying its k + 1 tokens).
        return self._assemble(self._launch_s(col, requests), hbm_s, gemm_s, attention_s, compute_s, tp_comm_s,
                              ep_comm_s, pp_s, gemm_flops, requests=batch,
                              fixed_s=col(self.fixed_kernels_s) + moe_elementwise_s)

    def prefill(self, tokens, context_tokens=0, request_tokens=None) -> StepTimes:
        """One prefill step over ``tokens`` new prompt tokens per attention rank, in chunks of
        ``request_tokens`` per request (default: one request of ``tokens``), each request with
        ``context_tokens`` already cached (an earlier chunk or a prefix-cache hit)."""
        (tokens, context), col = self._shaped(tokens, context_tokens)
        chunk = tokens if request_tokens is None else np.minimum(np.asarray(request_tokens, dtype=np.float64), tokens)
        chunk = np.maximum(chunk, 1.0)
        requests = tokens / chunk
        m = self.model
        dense_s, moe_s, expert_bytes, flops = self._layer_gemms(tokens, col, absorbed=False)
        head_s, head_flops = self._head_pricer.gemm(np.ceil(requests), m.vocab_size / col(self.instances.tp),
                                                    m.hidden_size)
        gemm_s = m.num_dense_layers * dense_s + m.num_moe_layers * moe_s + head_s
        gemm_flops = m.num_dense_layers * flops["dense"] + m.num_moe_layers * flops["moe"] + head_flops
        window, sliding = m.sliding_window or 0, m.num_sliding_window_layers
        moe_elementwise_s = m.num_moe_layers * self._moe_elementwise_bytes(tokens, col) / self.hbm_bytes_per_s
        hbm_s = self._streamed_bytes(col, expert_bytes, requests, tokens, context) / self.hbm_bytes_per_s \
            + moe_elementwise_s
        pairs_full = tokens * (context + chunk / 2)
        pairs_sliding = tokens * np.minimum(context + chunk / 2, window) if sliding else 0.0
        # The training model's flash rate: a call over a request's chunk, each query attending to the cached
        # context and half its chunk (causal), short chunks filling fewer SMs.
        rate = flash_forward_rate(self.model, self._pricer, self.options.cost, chunk, context + chunk / 2)
        attention_flops_s = self._attention_flops(tokens, pairs_full, pairs_sliding, col, absorbed=False) / rate
        attention_s = self._attention_kernel_s(col, attention_flops_s, requests, context)
        tp_comm_s, ep_comm_s, pp_s = self._collectives(tokens, np.ceil(requests), col)
        compute_s = gemm_flops / col(self._gemm_flops_per_s) + attention_flops_s
        # A prefill step of a pipeline runs its chunk through every stage in turn.
        return self._assemble(self._launch_s(col, tokens), hbm_s, gemm_s, attention_s, compute_s, tp_comm_s,
                              ep_comm_s, pp_s, gemm_flops, requests=np.ceil(requests),
                              fixed_s=col(self.fixed_kernels_s) + moe_elementwise_s)


def price_instances(model: ModelSpec, cluster: ClusterSpec, instances: InstanceArrays,
                    options: ServingOptions | None = None) -> InstancePricing:
    """Step-time pricing of ``instances`` (see :class:`InstancePricing`)."""
    return InstancePricing(model, cluster, instances, options)
