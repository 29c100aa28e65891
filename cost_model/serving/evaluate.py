"""Serving metrics of many plans at once: latency percentiles, throughput, goodput, GPUs for a rate, cost.

One call prices N plans (:class:`~cost_model.serving.plan.ServingPlanArrays`) for one workload. The step
times come from :func:`cost_model.serving.step.price_instances` and the memory from
:func:`cost_model.serving.memory.instance_memory`; this module adds the load: how many requests run at
once, how long they queue, and what that does to TTFT and TPOT (:mod:`cost_model.serving.queueing`).

Everything is computed per *attention rank* (a group of ``tp x pp`` GPUs with its own requests and KV
cache; an instance has ``attn_dp`` of them) and scaled to the fleet by ranks x instances.

Aggregated instances (chunked prefill, vLLM V1 / SGLang / TensorRT-LLM in-flight batching). A step carries
the decode batch B (one token each, k+1 with k drafted tokens) and up to c = max_num_batched_tokens - B(k+1)
prompt tokens. Tabulated per plan: the decode step t_dec(B) on a grid of B up to the batch the KV pool and
max_num_seqs allow, and the prefill step t_pf(s) on a grid of prompt tokens. A chunk of c tokens adds
Delta(B, c) to a decode step (:func:`_mixed_extra_s`): its marginal GPU time gpu_pf(c) - gpu_pf(1) (the
weights are read and the latency-bound collectives paid once for both) under the mixed step's own host
issue, eager past the largest captured graph, so graphs never lose to eager at equal batch. At request rate
lambda per rank:

* a fraction f = lambda s t_mix / c of steps carries a chunk (t_mix = t_dec + Delta(c); s the computed
  prompt tokens, prefix-cache hits excluded), so the mean step is T = t_dec(B) + f Delta(B, c);
* Little's law on the decode phase: B = lambda n_dec T, n_dec = (output tokens - 1) / tokens per step;
  both together are a quadratic in lambda for each B, so every grid point B gives its own rate lambda(B)
  in closed form, and each quantity at a given rate is read off the grid by interpolation (no iteration);
* TTFT = M/G/1 wait of the prompt queue (service s t_mix / c, utilisation lambda s t_mix / c;
  Pollaczek-Khinchine mean, Kingman tail) + the request's own n = ceil(s / c) chunks of s / n, each riding
  a decode step: n (t_dec + Delta(B, s / n)) plus the attention its later chunks pay over the earlier ones
  (the prompt priced as one request: its chunks together attend as the unchunked prompt does);
* TPOT = (t_dec + Delta(c) f_q) / tokens per step, f_q the binomial quantile of the share of the request's
  steps that carry a chunk (Sarathi-Serve's interference);
* the rank sustains at most min(lambda(B), c / (s t_mix)) at any B: the larger is what max load reaches.

Disaggregated plans: prefill instances run prompts in chunks of max_num_batched_tokens at t_pf (an M/G/1
queue in prompt tokens), each request's KV cache then moves to a decode instance (NVLink when the whole
plan fits in one scale-up domain, else the NIC; not overlapped with the prefill, an upper bound), and
decode instances run B = lambda n_dec t_dec(B) with no prefill interference. Each phase carries the fleet's
rate over its own instances.

Percentiles. TTFT at quantile q is the wait at q plus the service of the q-quantile prompt (a sum of
quantiles: an upper bound for independent parts); TPOT's spread comes from the chunks a request meets,
a binomial share of its steps, taken for the (1 - q)-quantile output length (short requests spread most).
SLO checks use the workload's quantile (:attr:`SLOSpec.quantile`). Closed loops (a concurrency): each
request is sent when an earlier one returns, so the prompt queue does not see Poisson arrivals; its wait
is the mean-value analysis of the closed network (:func:`cost_model.serving.queueing.closed_loop_wait`:
an arriving request finds (C - 1)/C of the queue and waits a prompt's service for each one there), and
C = B + X TTFT_mean (Little's law); past what the engine holds, TTFT = C / X - n_dec T.

Goodput is the largest request rate whose TTFT and TPOT meet the SLO (DistServe's definition), from the
grid with linear interpolation of the SLO margin; without an SLO it is the max-load rate. The operating
point: a target rate or concurrency, else the workload's arrival, else (an SLO) each plan's goodput, else
max load; the max-load figures (every engine full at its largest sustainable batch, no latency bound, as
trtllm-bench reports) are kept apart in ``max_load_*``. Costs count
every GPU the plan holds (prefill and decode) at ``cluster.economics.price_per_gpu_hour_usd``, over the
tokens the plan delivers at its goodput: a fleet sized for its load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from hardware.schema import ClusterSpec

from ..model_spec import ModelSpec
from . import queueing as q
from .kv_cache import kv_cache_bytes
from .memory import ServingMemory, instance_memory, kv_requests_per_rank
from .options import ServingOptions
from .plan import InstanceArrays, ServingPlanArrays
from .rules import nic_groups, serving_violations
from .step import price_instances, step_total_s
from .workload import WorkloadSpec

REPORTED_QUANTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99}

_DECODE_GRID = np.unique(np.concatenate([np.geomspace(1e-4, 0.05, 14), np.linspace(0.05, 1.0, 26)]))
"""Decode batch grid as fractions of the largest batch: dense at the top, where goodput and max load sit."""
_DISAGG_CLOSED_LOOP_ITERATIONS = 40
"""Bisection steps for a disaggregated closed loop's rate (2^-40 of the top rate)."""
_TOKEN_GRID_PER_OCTAVE = 3
"""Points per doubling of the prefill-time table over prompt tokens: 2^(j/3) from 1 token up to the longest
needed. The points do not depend on which plans one call prices (a longer need only adds points), so a plan's
figures are the same in any batch of plans: the search's coarse and fine passes agree with an exhaustive one."""
MAX_LOAD_FIELDS = ("max_load_ttft_ms_p50", "max_load_ttft_ms_p90", "max_load_ttft_ms_p99", "max_load_tpot_ms_p50",
                   "max_load_tpot_ms_p90", "max_load_tpot_ms_p99", "max_load_tokens_per_s_per_user",
                   "max_load_decode_batch")
"""The max-load figures beside max_load_output_tokens_per_s_per_gpu (every engine full, no latency bound)."""
STEP_FIELDS = ("host_s", "hbm_s", "gemm_s", "attention_s", "tp_comm_s", "ep_comm_s", "pp_s", "total_s")


@dataclass
class ServingMetrics:
    """Per-plan serving outputs (arrays of length N; units in the names)."""

    ttft_ms_p50: np.ndarray
    ttft_ms_p90: np.ndarray
    ttft_ms_p99: np.ndarray
    tpot_ms_p50: np.ndarray
    tpot_ms_p90: np.ndarray
    tpot_ms_p99: np.ndarray
    output_tokens_per_s_per_gpu: np.ndarray
    """At the evaluated load: the target rate or concurrency, else the workload's arrival, else the goodput
    when the workload has an SLO (the operating point the SLO defines), else max load."""
    tokens_per_s_per_user: np.ndarray
    """Output tokens a second one request sees while decoding (tokens per step / mean step)."""
    requests_per_s: np.ndarray
    """Request throughput of the fleet at the evaluated load."""
    goodput_requests_per_s: np.ndarray
    """Largest fleet request rate meeting both SLOs (max-load rate without an SLO)."""
    goodput_requests_per_s_per_gpu: np.ndarray
    max_load_output_tokens_per_s_per_gpu: np.ndarray
    """Output tokens/s per GPU with every engine full (no latency bound), as trtllm-bench measures."""
    min_gpus_for_target: np.ndarray
    """GPUs this layout needs to carry the target rate within the SLO (NaN without a target rate)."""
    cost_usd_per_m_output_tokens: np.ndarray
    """Every GPU of the plan (prefill and decode) for one hour at the price, over the output tokens the plan
    delivers in that hour at its goodput, per million. NaN without a price."""
    cost_usd_per_m_input_tokens: np.ndarray
    """The same fleet cost over the prompt tokens, per million."""
    num_gpus: np.ndarray
    """Every GPU the plan holds."""
    decode_batch: np.ndarray
    """Requests decoding per attention rank at the evaluated load."""
    kv_capacity_tokens: np.ndarray
    """KV pool tokens per attention rank of the decode instances."""
    max_concurrency: np.ndarray
    """max_model_len requests the decode instances' KV pools hold at once, per instance."""
    max_decode_batch: np.ndarray
    """Largest decode batch per attention rank: max_num_seqs or what the KV pool holds at the mean context."""
    prefill_decode_ratio: np.ndarray
    """Prefill instances per decode instance that balance the phases' SLO capacities (disaggregated plans;
    NaN for aggregated)."""
    kv_transfer_ms: np.ndarray
    """Moving the mean request's KV cache from prefill to decode (0 when aggregated)."""
    bottleneck: np.ndarray
    """What limits the plan: hbm compute tp_latency ep_comm host kv_capacity queueing."""
    memory_gib: dict[str, dict[str, np.ndarray]]
    """Per phase ('prefill', 'decode'): weights kv activations cuda_graph comm_buffers other, GiB per GPU."""
    decode_step: dict[str, np.ndarray]
    """Decode step breakdown at the evaluated batch (seconds): host hbm gemm attention tp_comm ep_comm pp total."""
    prefill_step: dict[str, np.ndarray]
    """One chunked-prefill step of max_num_batched_tokens on the prefill instances (seconds)."""
    violations: dict[str, np.ndarray]
    """Rule name -> True where the plan breaks it (:data:`cost_model.serving.rules.SERVING_RULES`)."""
    nic_groups: dict[str, np.ndarray]
    """Group name -> True where that group is wider than the NVLink domain and priced on the NIC."""
    load: str = ""
    """What load the latencies are at: 'rate R/s', 'concurrency C', 'at goodput' (an SLO, no load given: each
    plan at its own goodput) or 'max load' (no SLO, no load)."""
    extras: dict[str, Any] = field(default_factory=dict)
    ttft_ms_mean: np.ndarray | None = None
    """Mean TTFT (what genai-perf and vLLM's benchmark report as 'average TTFT'): mean wait + the mean
    prompt's own prefill."""
    ttft_ms_slo: np.ndarray | None = None
    """TTFT at the SLO's quantile (:attr:`SLOSpec.quantile`, p99 without an SLO) at the evaluated load."""
    tpot_ms_slo: np.ndarray | None = None
    """TPOT at the SLO's quantile at the evaluated load."""
    max_load_ttft_ms_p50: np.ndarray | None = None
    """TTFT with every engine full (as trtllm-bench's max-load runs report it: no queue outside the engine)."""
    max_load_ttft_ms_p90: np.ndarray | None = None
    max_load_ttft_ms_p99: np.ndarray | None = None
    max_load_tpot_ms_p50: np.ndarray | None = None
    """TPOT with every engine full: the decode batch at its largest sustainable size."""
    max_load_tpot_ms_p90: np.ndarray | None = None
    max_load_tpot_ms_p99: np.ndarray | None = None
    max_load_tokens_per_s_per_user: np.ndarray | None = None
    max_load_decode_batch: np.ndarray | None = None
    """Requests decoding per attention rank with every engine full."""

    def __len__(self) -> int:
        return len(self.num_gpus)

    @property
    def feasible(self) -> np.ndarray:
        return ~np.logical_or.reduce(list(self.violations.values()))

    def record(self, index: int) -> dict[str, Any]:
        """Plan ``index``'s metrics as plain values (for JSON/CSV reports)."""
        out: dict[str, Any] = {}
        for name in ("ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p90", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p90",
                     "tpot_ms_p99",
                     "output_tokens_per_s_per_gpu", "tokens_per_s_per_user", "requests_per_s", "goodput_requests_per_s",
                     "goodput_requests_per_s_per_gpu", "max_load_output_tokens_per_s_per_gpu", "min_gpus_for_target",
                     "cost_usd_per_m_output_tokens", "cost_usd_per_m_input_tokens", "decode_batch",
                     "kv_capacity_tokens", "max_concurrency", "max_decode_batch", "prefill_decode_ratio",
                     "kv_transfer_ms", "ttft_ms_slo", "tpot_ms_slo", *MAX_LOAD_FIELDS):
            values = getattr(self, name)
            value = float(values[index]) if values is not None else float("nan")
            out[name] = value if np.isfinite(value) else None
        out["num_gpus"] = int(self.num_gpus[index])
        out["bottleneck"] = str(self.bottleneck[index])
        out["memory_gib"] = {phase: {k: float(v[index]) for k, v in parts.items()}
                             for phase, parts in self.memory_gib.items()}
        out["decode_step_ms"] = {k.removesuffix("_s"): float(v[index]) * 1e3 for k, v in self.decode_step.items()}
        out["prefill_step_ms"] = {k.removesuffix("_s"): float(v[index]) * 1e3 for k, v in self.prefill_step.items()}
        out["violations"] = [name for name, mask in self.violations.items() if bool(mask[index])]
        out["priced_on_nic"] = [name for name, mask in self.nic_groups.items() if bool(mask[index])]
        return out


# ------------------------------------------------------------------------------------------ helpers

class _RowLookup:
    """Row-wise linear interpolation weights: each row's increasing grid (N, K) at one point x (N,);
    clamped at the ends. Built once, applied to many tables sampled on the same grids."""

    def __init__(self, grid: np.ndarray, x: np.ndarray):
        k = grid.shape[1]
        hi = np.clip((grid < np.asarray(x, dtype=np.float64)[:, None]).sum(axis=1), 1, k - 1)
        self.rows, self.lo, self.hi = np.arange(grid.shape[0]), hi - 1, hi
        g0, g1 = grid[self.rows, self.lo], grid[self.rows, self.hi]
        with np.errstate(divide="ignore", invalid="ignore"):
            self.w = np.clip(np.where(g1 > g0, (x - g0) / (g1 - g0), 0.0), 0.0, 1.0)

    def __call__(self, table: np.ndarray) -> np.ndarray:
        t0, t1 = table[self.rows, self.lo], table[self.rows, self.hi]
        return t0 + self.w * (t1 - t0)


def _interp_common(grid: np.ndarray, table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``table[i]`` (N, K), sampled at the one increasing ``grid`` (K,), at
    ``x[i, ...]`` ((N,) or (N, M)); clamped at the ends."""
    x = np.asarray(x, dtype=np.float64)
    k = len(grid)
    hi = np.clip(np.searchsorted(grid, x), 1, k - 1)
    lo = hi - 1
    rows = np.arange(table.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    g0, g1 = grid[lo], grid[hi]
    w = np.clip((x - g0) / (g1 - g0), 0.0, 1.0)
    t0, t1 = table[rows, lo], table[rows, hi]
    return t0 + w * (t1 - t0)


class _PrefillTable:
    """t_pf(tokens) of each instance on a common token grid, interpolated in log tokens."""

    def __init__(self, pricing: Any, n: int, max_tokens: float, context_tokens: float, prompt_tokens: float,
                 own_prompts: tuple[float, ...] = ()):
        """A step of ``tokens`` holds prompts of ``prompt_tokens`` (the mean computed prompt) each, or one
        shorter one, each after ``context_tokens`` cached (prefix-cache hits). ``own_prompts``: prompt lengths
        whose whole prefill as one request is priced too (:meth:`single_s`)."""
        singles = {tokens: pricing.prefill(np.full(n, tokens), np.full(n, context_tokens), np.full(n, tokens))
                   for tokens in sorted(set(own_prompts))}
        self._single = {tokens: np.broadcast_to(t.total_s, (n,)).astype(np.float64) for tokens, t in singles.items()}
        self._single_gpu = {tokens: np.broadcast_to(t.gpu_s, (n,)).astype(np.float64) for tokens, t in singles.items()}
        octaves = np.log2(max(max_tokens, 2.0))
        steps = np.arange(0, np.ceil(octaves * _TOKEN_GRID_PER_OCTAVE) + 1) / _TOKEN_GRID_PER_OCTAVE
        self.grid = np.unique(np.round(2.0 ** steps))
        self.log_grid = np.log(self.grid)

        def step(tokens: float):
            per_request = np.full(n, min(tokens, max(prompt_tokens, 1.0)))
            times = pricing.prefill(np.full(n, tokens), np.full(n, context_tokens), per_request)
            return np.broadcast_to(times.total_s, (n,)), np.broadcast_to(times.gpu_s, (n,))

        steps = [step(tokens) for tokens in self.grid]
        self.table = np.stack([total for total, _ in steps], axis=1)
        self.gpu_table = np.stack([gpu for _, gpu in steps], axis=1)
        """The GPU's part of each step (no host floor, no issue): what prompt tokens add to a step they share."""

    def time_s(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)
        return _interp_common(self.log_grid, self.table, np.log(tokens))

    def gpu_extra_s(self, tokens: np.ndarray) -> np.ndarray:
        """The GPU time ``tokens`` prompt tokens add to a step: gpu_pf(tokens) - gpu_pf(1) (the weights read,
        the latency-bound collectives paid once for the whole step); 0 for 0 tokens. The host's part of a
        mixed step is priced apart (:func:`_mixed_extra_s`): it depends on whether the step replays a graph,
        which a difference of whole step times would get wrong (eager t_pf(1) hides the GPU's work under
        its kernel issue, a graphed one does not)."""
        tokens = np.asarray(tokens, dtype=np.float64)
        one = self.gpu_table[:, 0] if tokens.ndim == 1 else self.gpu_table[:, :1]
        gpu = _interp_common(self.log_grid, self.gpu_table, np.log(np.maximum(tokens, 1.0)))
        return np.where(tokens > 0, np.maximum(gpu - one, 0.0), 0.0)

    def take(self, index: np.ndarray) -> "_PrefillTable":
        """The tables of the instances at ``index`` (priced once per distinct instance, used per plan)."""
        taken = object.__new__(_PrefillTable)
        taken.grid, taken.log_grid, taken.table = self.grid, self.log_grid, self.table[index]
        taken.gpu_table = self.gpu_table[index]
        taken._single = {tokens: values[index] for tokens, values in self._single.items()}
        taken._single_gpu = {tokens: values[index] for tokens, values in self._single_gpu.items()}
        return taken

    def single_s(self, tokens: float) -> np.ndarray:
        """t_pf of one request's whole prompt of ``tokens`` (one of ``own_prompts``)."""
        return self._single[tokens]

    def own_prefill_s(self, tokens: float, chunk_tokens: np.ndarray, step_at: Any) -> np.ndarray:
        """A prompt's own time in n = ceil(s / c) chunks of s / n tokens, each in an engine step that
        ``step_at(chunk)`` prices (the decode step it rides plus the chunk, :func:`_mixed_extra_s`; t_pf(chunk)
        on a prefill-only engine): n such steps plus the attention its later chunks pay over the earlier ones,
        gpu_pf(s) - gpu_pf(1) - n (gpu_pf(s / n) - gpu_pf(1)) with gpu_pf(s) priced as one request whose
        attention is the whole causal s^2/2 (the sum over its chunks)."""
        c = np.maximum(np.asarray(chunk_tokens, dtype=np.float64), 1.0)
        steps = np.maximum(np.ceil(tokens / c - 1e-9), 1.0)
        per_step = max(tokens, 1.0) / steps
        single = self._single_gpu[tokens]
        one = self.gpu_table[:, 0]
        if steps.ndim == 2:
            single, one = single[:, None], one[:, None]
        later_chunks = np.maximum(single - one - steps * self.gpu_extra_s(per_step), 0.0)
        return steps * step_at(per_step) + later_chunks


@dataclass
class _Lengths:
    """The workload's moments and quantiles that the formulas use."""

    prompt_mean: float        # computed prompt tokens (after prefix-cache hits)
    prompt_second: float
    prompt_q: dict[str, float]
    prompt_slo: float
    input_mean: float
    output_mean: float
    decode_steps: float       # decode steps a request runs: output - 1 tokens (at least one step) / tokens per step
    decode_steps_q: dict[str, float]  # steps of the short request whose TPOT spreads most: output at 1 - q
    tokens_per_step: float
    draft_tokens: int
    context_mean: float       # mean KV tokens of a decoding request
    prefix_tokens: float      # cached prompt tokens (context of the prefill)
    slo_q: float


def _lengths(workload: WorkloadSpec) -> _Lengths:
    keep = 1.0 - workload.prefix_cache_hit_rate
    slo_q = workload.slo.quantile if workload.slo else 0.99
    spec = workload.speculative
    tokens_per_step = float(q.speculative_tokens_per_step(spec.draft_tokens, spec.acceptance_rate))
    output_mean = workload.output_tokens.mean()
    input_mean = workload.input_tokens.mean()
    return _Lengths(
        prompt_mean=input_mean * keep, prompt_second=workload.input_tokens.second_moment() * keep ** 2,
        prompt_q={name: float(workload.input_tokens.quantile(value)) * keep
                  for name, value in REPORTED_QUANTILES.items()},
        prompt_slo=float(workload.input_tokens.quantile(slo_q)) * keep, input_mean=input_mean, output_mean=output_mean,
        decode_steps=max(output_mean - 1.0, 1.0) / tokens_per_step, tokens_per_step=tokens_per_step,
        decode_steps_q={name: max(float(workload.output_tokens.quantile(1.0 - value)) - 1.0, 1.0) / tokens_per_step
                        for name, value in dict(REPORTED_QUANTILES, slo=slo_q).items()},
        draft_tokens=int(spec.draft_tokens), context_mean=input_mean + output_mean / 2.0,
        prefix_tokens=input_mean * workload.prefix_cache_hit_rate, slo_q=slo_q)


def _decode_step(pricing: Any, batch: np.ndarray, lengths: _Lengths) -> Any:
    """One decode (verification) step of ``batch`` requests per attention rank at the mean context, each
    verifying k + 1 tokens with k drafted (the draft model's own cost is left out). A step runs whole
    requests: below one request per rank the engine idles between steps, so the step is one request's."""
    return pricing.decode_step(np.maximum(batch, 1.0), np.full(batch.shape, lengths.context_mean),
                               lengths.draft_tokens + 1)


class _DecodeTable:
    """The decode step of each instance on its batch grid: B = batch_max x :data:`_DECODE_GRID` (N, K), the
    step's parts (seconds, (N, K) each) and its bottleneck label."""

    def __init__(self, pricing: Any, batch_max: np.ndarray, lengths: _Lengths):
        self.batch_max = np.asarray(batch_max, dtype=np.float64)
        self.batch = np.maximum(self.batch_max, 1e-6)[:, None] * _DECODE_GRID[None, :]
        n, k = self.batch.shape
        steps = [_decode_step(pricing, self.batch[:, j], lengths) for j in range(k)]
        self.parts = {name: np.stack([np.broadcast_to(getattr(t, name), (n,)) for t in steps], axis=1)
                      .astype(np.float64) for name in STEP_FIELDS}
        self.labels = np.stack([np.broadcast_to(np.asarray(t.bottleneck, dtype=object), (n,)) for t in steps], axis=1)
        self.gpu = np.stack([np.broadcast_to(t.gpu_s, (n,)) for t in steps], axis=1).astype(np.float64)
        self.launch = np.stack([np.broadcast_to(t.launch_s, (n,)) for t in steps], axis=1).astype(np.float64)
        # What a mixed step's host issue is (:func:`_mixed_extra_s`).
        self.eager_launch = np.asarray(pricing.eager_launch_s, dtype=np.float64)
        self.graph_launch = np.asarray(pricing.graph_launch_s, dtype=np.float64)
        self.captured = np.asarray(pricing.graph_captured_tokens, dtype=np.float64)
        self.per_request_s = pricing.options.step_overhead_per_request_us * 1e-6
        self.overlap_scheduler = pricing.options.overlap_scheduler

    @property
    def t_dec(self) -> np.ndarray:
        return self.parts["total_s"]

    def take(self, index: np.ndarray) -> "_DecodeTable":
        taken = object.__new__(_DecodeTable)
        taken.batch_max, taken.batch = self.batch_max[index], self.batch[index]
        taken.parts = {name: values[index] for name, values in self.parts.items()}
        taken.labels = self.labels[index]
        taken.gpu, taken.launch = self.gpu[index], self.launch[index]
        taken.eager_launch, taken.graph_launch = self.eager_launch[index], self.graph_launch[index]
        taken.captured, taken.per_request_s = self.captured[index], self.per_request_s
        taken.overlap_scheduler = self.overlap_scheduler
        return taken

    def at(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The step's parts at ``batch`` per instance (interpolated on the grid) and the label of the nearest
        grid point."""
        u = np.asarray(batch, dtype=np.float64) / np.maximum(self.batch_max, 1e-6)
        parts = {name: _interp_common(_DECODE_GRID, values, u) for name, values in self.parts.items()}
        nearest = np.clip(np.searchsorted(_DECODE_GRID, u), 0, len(_DECODE_GRID) - 1)
        return parts, self.labels[np.arange(len(u)), nearest]


def _largest_batch(model: ModelSpec, memory: ServingMemory, instances: InstanceArrays, lengths: _Lengths,
                   options: ServingOptions) -> tuple[np.ndarray, np.ndarray]:
    """(largest decode batch per attention rank, whether the KV pool rather than max_num_seqs sets it).

    The pool holds whole requests of the mean context, each in whole pages, sliding-window layers only up to
    their window (:func:`cost_model.serving.memory.kv_requests_per_rank`): dividing the pool's tokens by the
    context would charge every layer the whole context, half the requests for GPT-OSS at 32K."""
    # An engine that reserves each request to completion (ServingOptions.kv_reserved_to_completion) holds
    # its whole input + output from admission on.
    held = lengths.input_mean + lengths.output_mean if options.kv_reserved_to_completion else lengths.context_mean
    kv_limited = kv_requests_per_rank(model, instances, memory, max(held, 1.0), options)
    return np.minimum(instances.max_num_seqs.astype(np.float64), kv_limited), kv_limited < instances.max_num_seqs


# ------------------------------------------------------------------------------------- the phases

@dataclass
class _Grid:
    """Quantities of an engine at each point of its decode-batch grid (all (N, K))."""

    batch: np.ndarray
    t_dec: np.ndarray         # the decode step alone
    rate: np.ndarray          # requests/s per attention rank
    capacity: np.ndarray      # sustainable requests/s at this batch: min(rate, prefill capacity)
    step_s: np.ndarray
    ttft_s: dict[str, np.ndarray]
    tpot_s: dict[str, np.ndarray]
    stable: np.ndarray
    wait_share: np.ndarray    # mean wait / mean TTFT
    ttft_mean_s: np.ndarray = None   # mean wait + the mean prompt's own prefill
    own_s: dict = None        # own prefill of the quantile prompts and of the mean one ('mean')
    closed_in_flight: np.ndarray = None  # requests in flight of a closed loop running at this grid point
    closed_ttft_s: dict = None           # its TTFT quantiles (mean-value analysis wait, queueing.closed_loop_wait)
    closed_wait_share: np.ndarray = None


def _mixed_extra_s(decode: _DecodeTable, table: _PrefillTable, chunk: np.ndarray, lengths: _Lengths) -> np.ndarray:
    """Delta(B, c): what a chunk of ``chunk`` prompt tokens (N, K) adds to the decode step of each grid batch B.

    One engine step runs both (vLLM V1, SGLang, TensorRT-LLM in-flight batching): the GPU streams the
    weights and pays the latency-bound collectives once, so the chunk adds its marginal GPU time
    gpu_pf(c) - gpu_pf(1) (:meth:`_PrefillTable.gpu_extra_s`); the host issues one pass, eagerly when the
    step's B (k + 1) + c tokens exceed the largest captured graph (vLLM's dispatcher runs such a step
    without a graph), and pays its per-request time for the chunk's prompts. So
    t_mix = step_total_s(overhead + per-request x prompts, launch_mix, gpu_dec + gpu_pf(c) - gpu_pf(1)) and
    Delta = t_mix - t_dec with t_dec = step_total_s(overhead, launch_dec, gpu_dec)
    (:func:`cost_model.serving.step.step_total_s`: host and GPU add without an overlap scheduler, the longer
    sets the step with one). A mixed step of a graphed engine is thus the eager engine's mixed step, and its
    decode-only steps are no slower: graphs never lose."""
    batch = np.maximum(decode.batch, 1.0)
    if chunk.shape != batch.shape:
        batch = np.broadcast_to(batch, chunk.shape)
    step_tokens = batch * (lengths.draft_tokens + 1) + chunk
    launch_mix = np.where(step_tokens <= decode.captured[:, None], decode.graph_launch[:, None],
                          decode.eager_launch[:, None])
    prompts = np.ceil(chunk / max(lengths.prompt_mean, 1.0))
    # The decode step's host work beyond its kernel issue (step overhead, its requests), plus the chunk's prompts.
    overhead = decode.parts["host_s"] - decode.launch + decode.per_request_s * prompts
    after = step_total_s(overhead, launch_mix, decode.gpu + table.gpu_extra_s(chunk), decode.overlap_scheduler)
    return np.where(chunk > 0, np.maximum(after - decode.t_dec, 0.0), 0.0)


def _aggregated_grid(decode: _DecodeTable, table: _PrefillTable, instances: InstanceArrays, lengths: _Lengths) -> _Grid:
    batch, t_dec = decode.batch, decode.t_dec
    budget = instances.max_num_batched_tokens.astype(np.float64)[:, None]
    chunk = np.maximum(budget - np.maximum(batch, 1.0) * (lengths.draft_tokens + 1), 0.0)
    delta = _mixed_extra_s(decode, table, chunk, lengths)

    def riding(c: np.ndarray) -> np.ndarray:
        """A step of the grid's decode batch carrying a chunk of ``c`` prompt tokens."""
        return t_dec + _mixed_extra_s(decode, table, c, lengths)
    t_mix = t_dec + delta
    s = lengths.prompt_mean
    n_dec = lengths.decode_steps
    with np.errstate(divide="ignore", invalid="ignore"):
        # B = lambda n_dec T and T = t_dec / (1 - lambda s Delta / c) give lambda = B / (n_dec t_dec + B s Delta / c).
        load = np.where(chunk > 0, s * delta / chunk, np.inf)
        rate = np.where(chunk > 0, batch / (n_dec * t_dec + batch * load), 0.0)
        step = t_dec / (1.0 - rate * load)
        prefill_capacity = np.where(chunk > 0, chunk / (s * t_mix), 0.0) if s > 0 else np.full(batch.shape, np.inf)
        rho = rate / prefill_capacity if s > 0 else np.zeros(batch.shape)
    stable = (rho < 1.0) & (chunk > 0)
    step = np.where(stable, step, np.inf)
    mixed = q.mixed_step_fraction(rate, s, chunk, step)
    service_scale = np.where(chunk > 0, t_mix / np.maximum(chunk, 1e-9), np.inf)
    wait_mean = q.mg1_mean_wait_s(rate, s * service_scale, lengths.prompt_second * service_scale ** 2)
    ttft, tpot, own_of = {}, {}, {}
    quantiles = dict(REPORTED_QUANTILES, slo=lengths.slo_q)
    prompts = dict(lengths.prompt_q, slo=lengths.prompt_slo)
    for name, value in quantiles.items():
        same = next((other for other in ttft if quantiles[other] == value and prompts[other] == prompts[name]), None)
        if same is not None and name != "slo":
            ttft[name], tpot[name] = ttft[same], tpot[same]
            continue
        if prompts[name] not in own_of:
            own_of[prompts[name]] = table.own_prefill_s(prompts[name], chunk, riding)
        own = own_of[prompts[name]]
        wait = q.wait_quantile_s(wait_mean, rho, value)
        ttft[name] = np.where(stable, wait + own, np.inf)
        tpot[name] = np.where(stable, q.tpot_quantile_s(t_dec, delta, mixed, lengths.decode_steps_q[name],
                                                         lengths.tokens_per_step, value), np.inf)
    for tokens in (*prompts.values(), s):
        if tokens not in own_of:
            own_of[tokens] = table.own_prefill_s(tokens, chunk, riding)
    with np.errstate(divide="ignore", invalid="ignore"):
        wait_share = np.where(stable, wait_mean / (wait_mean + own_of[s]), 1.0)  # of the mean TTFT
    own_named = {name: own_of[prompts[name]] for name in quantiles if prompts[name] in own_of}
    own_named["mean"] = own_of[s]
    # A closed loop at this rate: its requests are not Poisson arrivals; mean-value analysis of the closed
    # network (queueing.closed_loop_wait) gives the requests in flight and the prompt queue's wait.
    service = s * service_scale
    with np.errstate(invalid="ignore"):
        in_flight, closed_wait = q.closed_loop_wait(rate, service, batch + rate * own_of[s])
        closed_rho = np.where(np.isfinite(in_flight), rate * service * (1.0 - 1.0 / np.maximum(in_flight, 1.0)), 1.0)
        closed_ttft = {name: np.where(stable, q.wait_quantile_s(closed_wait, closed_rho, value) + own_of[prompts[name]],
                                      np.inf) for name, value in quantiles.items()}
        closed_share = np.where(stable, closed_wait / (closed_wait + own_of[s]), 1.0)
    closed_ttft["mean"] = np.where(stable, closed_wait + own_of[s], np.inf)
    ttft["mean"] = np.where(stable, wait_mean + own_of[s], np.inf)
    return _Grid(batch=batch, t_dec=t_dec, rate=rate, capacity=np.minimum(rate, prefill_capacity), step_s=step,
                 ttft_s=ttft, tpot_s=tpot, stable=stable, wait_share=wait_share,
                 ttft_mean_s=np.where(stable, wait_mean + own_of[s], np.inf), own_s=own_named,
                 closed_in_flight=np.where(stable, in_flight, np.inf), closed_ttft_s=closed_ttft,
                 closed_wait_share=closed_share)


def _decode_only_grid(decode: _DecodeTable, lengths: _Lengths) -> _Grid:
    batch, t_dec = decode.batch, decode.t_dec
    rate = batch / (lengths.decode_steps * t_dec)
    tpot = {name: t_dec / lengths.tokens_per_step for name in (*REPORTED_QUANTILES, "slo")}
    zeros = np.zeros(batch.shape)
    return _Grid(batch=batch, t_dec=t_dec, rate=rate, capacity=rate, step_s=t_dec,
                 ttft_s={k: zeros for k in (*tpot, "mean")},
                 tpot_s=tpot, stable=np.ones(batch.shape, dtype=bool), wait_share=zeros)


def _at_rate(grid: _Grid, rate: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """Grid quantities at ``rate`` per attention rank (interpolated on the stable, rising branch) and
    whether the engine sustains it."""
    usable = np.where(grid.stable, grid.capacity, 0.0)
    rising = np.maximum.accumulate(usable, axis=1)  # monotone envelope for the lookup
    ok = rising[:, -1] >= rate - 1e-12
    x = np.minimum(rate, rising[:, -1])
    at = _RowLookup(rising, x)
    out = {"batch": at(grid.batch), "step_s": at(np.where(np.isfinite(grid.step_s), grid.step_s, 0.0)),
           "wait_share": at(grid.wait_share)}
    big = 1e30
    for kind, values in (("ttft", grid.ttft_s), ("tpot", grid.tpot_s)):
        for name, table in values.items():
            value = at(np.where(np.isfinite(table), table, big))
            out[f"{kind}_{name}"] = np.where(ok & (value < 0.5 * big), value, np.inf)
    return out, ok


def _largest_rate_meeting(grid: _Grid, ttft_target_s: float, tpot_target_s: float) -> np.ndarray:
    """Largest rate per rank on the grid whose TTFT (+ offset) and TPOT at the SLO quantile meet the
    targets; the crossing between the last point that meets them and the next is found by linear
    interpolation of the margin."""
    ttft = grid.ttft_s["slo"]
    with np.errstate(invalid="ignore"):
        margin = np.minimum(1.0 - ttft / ttft_target_s, 1.0 - grid.tpot_s["slo"] / tpot_target_s)
    margin = np.where(grid.stable & np.isfinite(margin), margin, -1.0)
    ok = margin >= 0
    any_ok = ok.any(axis=1)
    k = grid.rate.shape[1]
    last = np.where(any_ok, k - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
    nxt = np.minimum(last + 1, k - 1)
    rows = np.arange(len(last))
    m0, m1 = margin[rows, last], margin[rows, nxt]
    # Rates on the rising envelope of the capacity, as :func:`_at_rate` reads the latencies at a rate: where the
    # capacity dips as the batch grows (a GEMM crossing a tile), an open loop at a rate settles at the smallest
    # batch that carries it, so the goodput and the latencies reported at it come from the same curve.
    rising = np.maximum.accumulate(np.where(grid.stable, grid.capacity, 0.0), axis=1)
    c0, c1 = rising[rows, last], rising[rows, nxt]
    with np.errstate(divide="ignore", invalid="ignore"):
        # toward an unstable point the margin is not a number that interpolates: stop at the last good point
        frac = np.where((nxt > last) & (m0 > m1) & grid.stable[rows, nxt], np.clip(m0 / (m0 - m1), 0.0, 1.0), 0.0)
    best = c0 + frac * np.maximum(c1 - c0, 0.0)
    return np.where(any_ok, best, 0.0)


def _prefill_phase(table: _PrefillTable, instances: InstanceArrays, lengths: _Lengths, transfer: dict[str, np.ndarray]):
    """Disaggregated prefill engines: chunk c = max_num_batched_tokens at t_pf(c); M/G/1 in prompt tokens.
    Returns (capacity per rank, function rate -> TTFT per quantile name, largest rate meeting a TTFT)."""
    chunk = instances.max_num_batched_tokens.astype(np.float64)
    t_chunk = table.time_s(chunk)
    scale = t_chunk / chunk
    mean_service = lengths.prompt_mean * scale
    second = lengths.prompt_second * scale ** 2
    capacity = np.where(mean_service > 0, 1.0 / np.maximum(mean_service, 1e-300), np.inf)
    prompts = dict(lengths.prompt_q, slo=lengths.prompt_slo)
    own = {name: table.own_prefill_s(tokens, chunk, table.time_s) + transfer[name] for name, tokens in prompts.items()}
    own_mean = table.own_prefill_s(lengths.prompt_mean, chunk, table.time_s) + transfer["mean"]
    quantiles = dict(REPORTED_QUANTILES, slo=lengths.slo_q)

    def ttft(rate: np.ndarray, fleet_concurrency: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """TTFT at ``rate`` per prefill rank: Poisson arrivals (M/G/1), or a closed loop of
        ``fleet_concurrency`` requests (mean-value analysis: an arrival finds (C - 1)/C of the rank's queue,
        :func:`cost_model.serving.queueing.closed_loop_wait`)."""
        rho = rate * mean_service
        if fleet_concurrency is None:
            wait = q.mg1_mean_wait_s(rate, mean_service, second)
        else:
            u = 1.0 - 1.0 / np.maximum(np.asarray(fleet_concurrency, dtype=np.float64), 1.0)
            with np.errstate(divide="ignore", invalid="ignore"):
                wait = np.where(rho < 1.0, u * rho * mean_service / (1.0 - u * rho), np.inf)
            rho = u * rho
        out = {name: q.wait_quantile_s(wait, rho, quantiles[name]) + own[name] for name in quantiles}
        out["mean"] = wait + own_mean
        return out

    def largest_rate(target_s: float) -> np.ndarray:
        """Bisection on the utilisation: TTFT at the SLO quantile rises with it."""
        lo, hi = np.zeros(chunk.shape), np.ones(chunk.shape)
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            good = ttft(mid * capacity)["slo"] <= target_s
            lo, hi = np.where(good, mid, lo), np.where(good, hi, mid)
        return np.where(own["slo"] <= target_s, lo * capacity, 0.0)

    return capacity, ttft, largest_rate, t_chunk


def _distinct(instances: InstanceArrays) -> tuple[InstanceArrays, np.ndarray]:
    """(the distinct layouts, the index of each instance's layout among them)."""
    columns = np.stack([np.asarray(getattr(instances, f.name), dtype=np.int64) for f in fields(instances)], axis=1)
    if len(columns) == 0:
        return instances, np.zeros(0, dtype=np.int64)
    _, first, inverse = np.unique(columns, axis=0, return_index=True, return_inverse=True)
    return instances.take(first), inverse.reshape(-1)


def _take_memory(memory: ServingMemory, index: np.ndarray) -> ServingMemory:
    return ServingMemory(**{f.name: getattr(memory, f.name)[index] for f in fields(memory)})


# ---------------------------------------------------------------------------------------- evaluate

def evaluate_serving(model: ModelSpec, cluster: ClusterSpec, workload: WorkloadSpec, plans: ServingPlanArrays,
                     options: ServingOptions | None = None, *, target_rate_per_s: float | None = None,
                     target_concurrency: float | None = None) -> ServingMetrics:
    """Serving metrics of every plan for ``workload`` (module docstring).

    The latencies are at ``target_rate_per_s`` (open loop, fleet requests/s) or ``target_concurrency``
    (closed loop, requests in flight in the fleet) when given, else at the workload's arrival, else, when the
    workload has an SLO, at each plan's goodput (the operating point the SLO defines: a plan meeting the
    SLO shows latencies within it), else at max load. The max-load figures (every engine full, no latency
    bound) are always reported apart: ``max_load_*``. ``min_gpus_for_target`` uses the target rate (or the
    workload's rate)."""
    options = options or ServingOptions()
    if target_rate_per_s is not None and target_concurrency is not None:
        raise ValueError("give target_rate_per_s or target_concurrency, not both")
    n = len(plans)
    lengths = _lengths(workload)
    model_len = workload.model_len
    agg = ~plans.disaggregated
    gpu = cluster.gpu

    # Everything per instance is priced once per distinct layout (replicas and P:D counts repeat them).
    disagg_any = bool(plans.disaggregated.any())
    unique_d, inv_d = _distinct(plans.decode)
    unique_p, inv_p = _distinct(plans.prefill) if disagg_any else (unique_d, inv_d)
    # The cluster's topology adds NCCL's NVLS buffers of TP groups on NVLink-SHARP domains (1.49 GiB per GPU).
    mem_d_u = instance_memory(model, gpu, unique_d, model_len, options, topology=cluster.topology)
    mem_p_u = instance_memory(model, gpu, unique_p, model_len, options,
                              topology=cluster.topology) if disagg_any else mem_d_u
    mem_d, mem_p = _take_memory(mem_d_u, inv_d), _take_memory(mem_p_u, inv_p)
    pricing_d = price_instances(model, cluster, unique_d, options)
    pricing_p = (price_instances(model, cluster, unique_p, options.for_prefill_instances()) if disagg_any
                 else pricing_d)

    longest_prompt = max(workload.input_tokens.longest() * (1 - workload.prefix_cache_hit_rate), 1.0)
    max_tokens = max([longest_prompt, *unique_d.max_num_batched_tokens.tolist(),
                      *unique_p.max_num_batched_tokens.tolist()])
    own_prompts = (*lengths.prompt_q.values(), lengths.prompt_slo, lengths.prompt_mean)
    def prefill_table(pricing: Any, count: int) -> _PrefillTable:
        return _PrefillTable(pricing, count, max_tokens, lengths.prefix_tokens, lengths.prompt_mean, own_prompts)

    table_d_u = prefill_table(pricing_d, len(unique_d))
    table_p_u = prefill_table(pricing_p, len(unique_p)) if disagg_any else table_d_u
    table_d, table_p = table_d_u.take(inv_d), table_p_u.take(inv_p)

    batch_max_u, _ = _largest_batch(model, mem_d_u, unique_d, lengths, options)
    decode_table = _DecodeTable(pricing_d, batch_max_u, lengths).take(inv_d)
    batch_max, kv_binds = _largest_batch(model, mem_d, plans.decode, lengths, options)
    grid_agg = _aggregated_grid(decode_table, table_d, plans.decode, lengths)
    grid_dec = _decode_only_grid(decode_table, lengths) if disagg_any else grid_agg

    # KV transfer of disaggregated plans: NVLink when the whole plan sits in one scale-up domain.
    same_domain = plans.num_gpus <= cluster.topology.domain_gpus
    prompts_full = {name: float(workload.input_tokens.quantile(v)) for name, v in REPORTED_QUANTILES.items()}
    prompts_full["slo"] = float(workload.input_tokens.quantile(lengths.slo_q))
    transfer = {name: np.where(plans.disaggregated, q.kv_transfer_time_s(
        cluster.topology, kv_cache_bytes(model, plans.prefill.kv_dtype, tokens), plans.prefill.gpus, same_domain), 0.0)
        for name, tokens in prompts_full.items()}
    transfer_mean = np.where(plans.disaggregated, q.kv_transfer_time_s(
        cluster.topology, kv_cache_bytes(model, plans.prefill.kv_dtype, lengths.input_mean), plans.prefill.gpus,
        same_domain), 0.0)
    transfer["mean"] = transfer_mean
    pf_capacity, pf_ttft, pf_largest, pf_chunk_s = _prefill_phase(table_p, plans.prefill, lengths, transfer)

    ranks_d = (plans.decode.attn_dp * plans.decode_instances).astype(np.float64)
    ranks_p = (plans.prefill.attn_dp * plans.prefill_instances).astype(np.float64)

    # ---- max load: every engine full.
    agg_cap = grid_agg.capacity.max(axis=1)
    dec_cap = grid_dec.rate[:, -1]
    max_rate = np.where(agg, agg_cap * ranks_d, np.minimum(pf_capacity * ranks_p, dec_cap * ranks_d))

    # ---- goodput.
    slo = workload.slo
    if slo is None:
        good_rate = max_rate
        pf_good = pf_capacity
        dec_good = dec_cap
    else:
        ttft_t, tpot_t = slo.ttft_ms / 1e3, slo.tpot_ms / 1e3
        agg_good = _largest_rate_meeting(grid_agg, ttft_t, tpot_t)
        dec_good = _largest_rate_meeting(grid_dec, np.inf, tpot_t)
        pf_good = pf_largest(ttft_t)
        good_rate = np.where(agg, agg_good * ranks_d, np.minimum(pf_good * ranks_p, dec_good * ranks_d))
    num_gpus = plans.num_gpus.astype(np.float64)

    # ---- the evaluated load.
    rate = target_rate_per_s if target_rate_per_s is not None else (
        None if target_concurrency is not None else workload.request_rate_per_s)
    concurrency = target_concurrency if target_concurrency is not None else (
        workload.concurrency if rate is None else None)

    def open_loop(fleet: np.ndarray):
        """Latencies, batch and step at the open-loop fleet rate ``fleet`` (per plan), and whether it is
        sustained."""
        out: dict[str, np.ndarray] = {}
        at_agg, ok_agg = _at_rate(grid_agg, fleet / ranks_d)
        at_dec, ok_dec = _at_rate(grid_dec, fleet / ranks_d)
        pf_rate = fleet / ranks_p
        pf_lat = pf_ttft(pf_rate)
        pf_ok = pf_rate < pf_capacity
        sustained = np.where(agg, ok_agg, ok_dec & pf_ok)
        for name in REPORTED_QUANTILES:
            out[f"ttft_{name}"] = np.where(agg, at_agg[f"ttft_{name}"], np.where(pf_ok, pf_lat[name], np.inf))
            out[f"tpot_{name}"] = np.where(agg, at_agg[f"tpot_{name}"], at_dec[f"tpot_{name}"])
        out["ttft_slo"] = np.where(agg, at_agg["ttft_slo"], np.where(pf_ok, pf_lat["slo"], np.inf))
        out["ttft_mean"] = np.where(agg, at_agg["ttft_mean"], np.where(pf_ok, pf_lat["mean"], np.inf))
        out["tpot_slo"] = np.where(agg, at_agg["tpot_slo"], at_dec["tpot_slo"])
        delivered = np.where(sustained, fleet, np.where(agg, agg_cap * ranks_d, max_rate))
        return (out, delivered, np.where(agg, at_agg["batch"], at_dec["batch"]),
                np.where(agg, at_agg["step_s"], at_dec["step_s"]), np.where(agg, at_agg["wait_share"], 0.0), sustained)

    # Max load: every engine full, no latency bound (the max_load_* figures, whatever the operating point).
    max_fleet, max_batch, max_step_s, max_wait_share, max_lat = _closed_loop(
        grid_agg, grid_dec, table_d, plans, lengths, None, batch_max, pf_capacity, pf_ttft, ranks_d, ranks_p)
    at_goodput = rate is None and concurrency is None and slo is not None
    metrics: dict[str, np.ndarray] = {}
    if rate is not None:
        load = f"rate {rate:g}/s"
        metrics, fleet_rate, batch, step_s, wait_share, sustained = open_loop(np.full(n, float(rate)))
        kv_fits_batch = sustained | ~kv_binds
    elif at_goodput:
        # The operating point an SLO defines without a given load: each plan at its goodput, the largest
        # open-loop rate meeting both SLOs, so a plan that meets them shows latencies within them.
        load = "at goodput"
        metrics, fleet_rate, batch, step_s, wait_share, _ = open_loop(good_rate)
        kv_fits_batch = batch_max >= 1.0
    elif concurrency is not None:
        load = f"concurrency {concurrency:g}"
        per_rank = np.full(n, float(concurrency)) / ranks_d
        fleet_rate, batch, step_s, wait_share, lat = _closed_loop(grid_agg, grid_dec, table_d, plans, lengths,
                                                                  per_rank, batch_max, pf_capacity, pf_ttft,
                                                                  ranks_d, ranks_p)
        metrics.update(lat)
        kv_fits_batch = ~kv_binds | (per_rank <= batch_max)
    else:
        load = "max load"
        fleet_rate, batch, step_s, wait_share = max_fleet, max_batch, max_step_s, max_wait_share
        metrics.update(max_lat)
        kv_fits_batch = batch_max >= 1.0

    # ---- SLO checks at the evaluated load (no load given: at the goodput, which meets them when positive).
    if slo is None:
        ttft_met = tpot_met = np.ones(n, dtype=bool)
    elif at_goodput:
        ttft_met = tpot_met = good_rate > 0
    else:
        ttft_met = metrics["ttft_slo"] <= slo.ttft_ms / 1e3 + 1e-12
        tpot_met = metrics["tpot_slo"] <= slo.tpot_ms / 1e3 + 1e-12

    # ---- step breakdowns at the evaluated batch, and the bottleneck.
    decode_parts, label = decode_table.at(np.maximum(batch, 1.0))
    prefill_times = pricing_p.prefill(unique_p.max_num_batched_tokens.astype(np.float64),
                                      np.full(len(unique_p), lengths.prefix_tokens))
    prefill_parts = {name: np.broadcast_to(getattr(prefill_times, name), (len(unique_p),))[inv_p]
                     for name in STEP_FIELDS}
    label = np.asarray(label, dtype=object)
    at_kv_limit = kv_binds & (batch >= 0.98 * batch_max)
    label = np.where(wait_share > 0.5, "queueing", label)
    label = np.where(at_kv_limit, "kv_capacity", label)  # the queue's cause when the KV pool is full

    memory_checks = {
        "weights_fit": mem_p.weights_fit & mem_d.weights_fit,
        "kv_fits_one_request": mem_p.kv_fits_one_request & mem_d.kv_fits_one_request,
        "prefill_workspace_fits": mem_p.prefill_workspace_fits & mem_d.prefill_workspace_fits,
    }
    load_checks = {"kv_fits_batch": kv_fits_batch, "ttft_slo_met": ttft_met, "tpot_slo_met": tpot_met}
    violations = serving_violations(model, cluster, plans, memory_checks, load_checks)

    output_tps_per_gpu = fleet_rate * lengths.output_mean / num_gpus
    price = cluster.economics.price_per_gpu_hour_usd
    fleet_usd_per_s = num_gpus * (price if price is not None else np.nan) / 3600.0
    with np.errstate(divide="ignore", invalid="ignore"):
        cost_out = np.where(good_rate > 0, fleet_usd_per_s / (good_rate * lengths.output_mean) * 1e6, np.inf)
        cost_in = np.where(good_rate > 0, fleet_usd_per_s / (good_rate * lengths.input_mean) * 1e6, np.inf)
        if price is None:
            cost_out = cost_in = np.full(n, np.nan)
        tokens_per_user = np.where(step_s > 0, lengths.tokens_per_step / step_s, 0.0)
        max_tokens_per_user = np.where(max_step_s > 0, lengths.tokens_per_step / max_step_s, 0.0)

    target = target_rate_per_s if target_rate_per_s is not None else workload.request_rate_per_s
    if target is None:
        min_gpus = np.full(n, np.nan)
    else:
        per_agg_instance = np.where(agg, good_rate / np.maximum(plans.decode_instances, 1), 0.0)
        need_agg = q.instances_for_rate(target, per_agg_instance) * plans.decode.gpus
        need_p = q.instances_for_rate(target, pf_good * plans.prefill.attn_dp)
        need_d = q.instances_for_rate(target, dec_good * plans.decode.attn_dp)
        need_dis = need_p * plans.prefill.gpus + need_d * plans.decode.gpus
        min_gpus = np.where(agg, need_agg, need_dis)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(agg, np.nan, q.prefill_decode_ratio(pf_good * plans.prefill.attn_dp,
                                                             dec_good * plans.decode.attn_dp))

    memory_gib = {"decode": mem_d.breakdown_gib}
    if plans.disaggregated.any():
        memory_gib["prefill"] = {k: np.where(agg, mem_d.breakdown_gib[k], v) for k, v in mem_p.breakdown_gib.items()}
    else:
        memory_gib["prefill"] = mem_d.breakdown_gib
    ms = 1e3
    return ServingMetrics(
        ttft_ms_p50=metrics["ttft_p50"] * ms, ttft_ms_p90=metrics["ttft_p90"] * ms,
        ttft_ms_p99=metrics["ttft_p99"] * ms, tpot_ms_p50=metrics["tpot_p50"] * ms,
        tpot_ms_p90=metrics["tpot_p90"] * ms, tpot_ms_p99=metrics["tpot_p99"] * ms,
        output_tokens_per_s_per_gpu=output_tps_per_gpu, tokens_per_s_per_user=tokens_per_user,
        requests_per_s=fleet_rate, goodput_requests_per_s=good_rate,
        goodput_requests_per_s_per_gpu=good_rate / num_gpus,
        max_load_output_tokens_per_s_per_gpu=max_rate * lengths.output_mean / num_gpus, min_gpus_for_target=min_gpus,
        cost_usd_per_m_output_tokens=cost_out, cost_usd_per_m_input_tokens=cost_in, num_gpus=plans.num_gpus.copy(),
        decode_batch=batch, kv_capacity_tokens=mem_d.kv_capacity_tokens, max_concurrency=mem_d.max_concurrency,
        max_decode_batch=batch_max, prefill_decode_ratio=ratio, kv_transfer_ms=transfer_mean * ms,
        bottleneck=label.astype(str), memory_gib=memory_gib, decode_step=decode_parts,
        prefill_step=prefill_parts, violations=violations, nic_groups=nic_groups(cluster, plans, model), load=load,
        ttft_ms_mean=metrics["ttft_mean"] * ms,
        ttft_ms_slo=metrics["ttft_slo"] * ms if "ttft_slo" in metrics else None,
        tpot_ms_slo=metrics["tpot_slo"] * ms if "tpot_slo" in metrics else None,
        max_load_ttft_ms_p50=max_lat["ttft_p50"] * ms, max_load_ttft_ms_p90=max_lat["ttft_p90"] * ms,
        max_load_ttft_ms_p99=max_lat["ttft_p99"] * ms, max_load_tpot_ms_p50=max_lat["tpot_p50"] * ms,
        max_load_tpot_ms_p90=max_lat["tpot_p90"] * ms, max_load_tpot_ms_p99=max_lat["tpot_p99"] * ms,
        max_load_tokens_per_s_per_user=max_tokens_per_user, max_load_decode_batch=max_batch,
        extras={"slo_quantile": lengths.slo_q, "tokens_per_step": lengths.tokens_per_step,
                "prefill_chunk_s": pf_chunk_s})


def _closed_loop(grid_agg: _Grid, grid_dec: _Grid, table: _PrefillTable, plans: ServingPlanArrays, lengths: _Lengths,
                 per_rank: np.ndarray | None, batch_max: np.ndarray, pf_capacity: np.ndarray, pf_ttft: Any,
                 ranks_d: np.ndarray, ranks_p: np.ndarray):
    """Closed loop with ``per_rank`` requests in flight per decode attention rank (None: engines full).

    Aggregated: the engine at batch B runs at the grid's rate X(B) (the same steady state as an open loop at
    that rate) and holds C(B) = B + X TTFT_mean requests (Little's law on the prompt phase); the C asked for
    is read off C(B). Past the largest C a stable engine holds, it runs saturated at its top rate and the rest
    wait outside: TTFT = C / X - n_dec T (Little's law on the whole loop). Max load: the saturated engine,
    TTFT without the outside queue.
    Disaggregated: the decode engines hold B = min(C, B_max) (prefill and transfer are short beside decode),
    the fleet rate is the smaller of decode's B / (n_dec t_dec) and prefill's capacity; TTFT is the prefill
    queue's (mean-value analysis of the closed loop, at most Little's C / X - n_dec t_dec), or the service
    alone at max load."""
    n = len(plans)
    agg = ~plans.disaggregated
    quantiles = dict(REPORTED_QUANTILES, slo=lengths.slo_q)
    g = grid_agg
    # Requests in flight at each grid batch: B decoding plus rate x mean TTFT in the prompt queue and prefill,
    # the wait from the mean-value analysis of the closed loop (not the open loop's Poisson M/G/1).
    in_flight = np.where(g.stable, g.closed_in_flight, np.inf)
    stable_top = np.max(np.where(g.stable & np.isfinite(g.closed_in_flight), g.closed_in_flight, 0.0), axis=1)
    # The engine's saturation point: the last stable grid point at or below the largest sustainable rate.
    usable = np.where(g.stable, g.capacity, -1.0)
    top = np.argmax(usable, axis=1)
    rows = np.arange(n)
    c_rank = stable_top if per_rank is None else per_rank
    saturated = c_rank >= stable_top
    envelope = np.maximum.accumulate(np.where(g.stable, in_flight, np.inf), axis=1)
    at = _RowLookup(envelope, np.minimum(c_rank, stable_top))
    rate = np.where(saturated, g.capacity[rows, top], at(np.where(g.stable, g.rate, 0.0)))
    step = np.where(saturated, g.step_s[rows, top], at(np.where(g.stable, g.step_s, 0.0)))
    b_eff = rate * lengths.decode_steps * step
    lat: dict[str, np.ndarray] = {}
    finite = {kind: {name: np.where(np.isfinite(table), table, 0.0) for name, table in tables.items()}
              for kind, tables in (("ttft", g.closed_ttft_s), ("tpot", g.tpot_s), ("own", g.own_s))}
    with np.errstate(divide="ignore", invalid="ignore"):
        little = np.where(rate > 0, c_rank / rate - lengths.decode_steps * step, np.inf)  # mean TTFT, Little's law
    own_mean = finite["own"]["mean"][rows, top]
    for name in (*quantiles, "mean"):
        queued = finite["own"][name][rows, top] + np.maximum(little - own_mean, 0.0)
        if name == "mean":  # Little's law gives the mean itself
            lat["ttft_mean"] = np.where(saturated & (per_rank is not None), np.maximum(little, own_mean),
                                        np.where(saturated, finite["ttft"][name][rows, top], at(finite["ttft"][name])))
            continue
        lat[f"ttft_{name}"] = np.where(saturated & (per_rank is not None), queued,
                                       np.where(saturated, finite["ttft"][name][rows, top], at(finite["ttft"][name])))
        lat[f"tpot_{name}"] = np.where(saturated, finite["tpot"][name][rows, top], at(finite["tpot"][name]))
    none_stable = ~g.stable.any(axis=1)  # not even the smallest batch keeps up: nothing is served
    rate = np.where(none_stable, 0.0, rate)
    b_eff = np.where(none_stable, 0.0, b_eff)
    for key in lat:
        lat[key] = np.where(none_stable, np.inf, lat[key])
    with np.errstate(divide="ignore", invalid="ignore"):
        wait_share = np.where(saturated & (per_rank is not None),
                              np.maximum(little - own_mean, 0.0) / np.maximum(little, own_mean),
                              np.where(saturated, g.closed_wait_share[rows, top], at(g.closed_wait_share)))

    # Disaggregated: decode engines hold what the prefill phase does not, at most B_max; prefill engines keep up
    # or bound the rate. With C requests in flight the fleet rate X solves C = ranks_d B(X) + X TTFT_mean(X)
    # (Little on both phases; B(X) off the decode grid, TTFT by mean-value analysis), both sides rising in X:
    # bisection. Past the largest C the engines hold, X is the top rate and the rest wait (Little bounds TTFT).
    service = pf_ttft(np.zeros(n))  # own chunks and the KV transfer, no wait
    b_dec = np.minimum(c_rank, batch_max)
    if per_rank is None:
        t_dec_d = _interp_common(_DECODE_GRID, grid_dec.t_dec, b_dec / np.maximum(batch_max, 1e-6))
        fleet_d = np.minimum(b_dec / (lengths.decode_steps * t_dec_d) * ranks_d, pf_capacity * ranks_p)
        queued = service
    else:
        fleet_c = per_rank * ranks_d
        rising = np.maximum.accumulate(grid_dec.rate, axis=1)
        top_rate = np.minimum(pf_capacity * ranks_p * (1 - 1e-6), rising[:, -1] * ranks_d)

        def in_flight(x: np.ndarray):
            batch_at = _RowLookup(rising, x / ranks_d)(grid_dec.batch)
            ttft_at = pf_ttft(x / ranks_p, fleet_c)
            return ranks_d * batch_at + x * np.where(np.isfinite(ttft_at["mean"]), ttft_at["mean"], np.inf), batch_at

        lo, hi = np.zeros(n), top_rate.copy()
        for _ in range(_DISAGG_CLOSED_LOOP_ITERATIONS):
            mid = 0.5 * (lo + hi)
            below = in_flight(mid)[0] <= fleet_c
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        fleet_d = np.where(in_flight(top_rate)[0] <= fleet_c, top_rate, lo)
        b_dec = np.maximum(in_flight(fleet_d)[1], np.minimum(c_rank, 1.0))
        t_dec_d = _interp_common(_DECODE_GRID, grid_dec.t_dec, b_dec / np.maximum(batch_max, 1e-6))
        queued = pf_ttft(fleet_d / ranks_p, fleet_c)
    if per_rank is None:  # engines full, the queue outside them not counted (as max-load benchmarks report)
        pf_lat = service
    else:  # past the top rate the rest wait outside the engines: Little's law gives their TTFT
        with np.errstate(divide="ignore", invalid="ignore"):
            little = np.where(fleet_d > 0, per_rank * ranks_d / fleet_d - lengths.decode_steps * t_dec_d, np.inf)
        extra = np.maximum(little - service["p50"], 0.0)
        pf_lat = {name: np.minimum(queued[name], service[name] + extra) for name in service}
    lat["ttft_mean"] = np.where(agg, lat["ttft_mean"], pf_lat["mean"])
    for name in quantiles:
        lat[f"ttft_{name}"] = np.where(agg, lat[f"ttft_{name}"], pf_lat[name])
        lat[f"tpot_{name}"] = np.where(agg, lat[f"tpot_{name}"], t_dec_d / lengths.tokens_per_step)
    fleet = np.where(agg, rate * ranks_d, fleet_d)
    batch = np.where(agg, b_eff, fleet_d / ranks_d * lengths.decode_steps * t_dec_d)
    step_s = np.where(agg, step, t_dec_d)
    return fleet, batch, step_s, np.where(agg, wait_share, 0.0), lat

