"""Queueing arithmetic of a serving fleet: pure numpy functions, every argument an array (plans broadcast).

What each function computes and where its formula comes from:

* Little's law, L = lambda W (Little 1961, "A proof for the queuing formula L = lambda W", Oper. Res. 9(3)).
* M/D/1 and M/G/1 mean waits: Pollaczek-Khinchine, W = lambda E[S^2] / (2 (1 - rho)) (Kleinrock,
  "Queueing Systems Vol. 1", 1975, eq. 5.105); with a deterministic service S = 1/mu it is
  rho / (2 mu (1 - rho)).
* Wait percentiles: an arriving request waits with probability rho (PASTA: Poisson arrivals see the time
  average, Wolff 1982; in M/G/1 the server is busy a fraction rho of the time) and, when it waits, its wait
  is taken exponential with the conditional mean W / rho: exact for M/M/1, Kingman's heavy-traffic limit
  for M/G/1 (Kingman 1962, "On queues in heavy traffic", J. R. Stat. Soc. B 24). Hence
  W_q = 0 for q <= 1 - rho, else (W / rho) ln(rho / (1 - q)).
* Speculative decoding: with k drafted tokens each accepted independently with probability alpha, a
  verification step yields (1 - alpha^(k+1)) / (1 - alpha) tokens on average (Leviathan, Kalman, Matias,
  "Fast Inference from Transformers via Speculative Decoding", ICML 2023, eq. 1).
* Chunked-prefill interference: a decode step that also carries a prefill chunk takes longer; a request of
  n steps sees Binomial(n, f) such steps when a fraction f of steps carry one (f = lambda s T / c: the prompt
  tokens that arrive in a mean step T over the chunk c) (Sarathi-Serve, Agrawal et
  al. OSDI 2024, section 4: stall-free batching puts prefill chunks into decode batches), so its TPOT
  quantile is taken at f + z_q sqrt(f (1 - f) / n) (normal approximation of the binomial).
* Closed loops (C requests in flight, each sent when the previous one returns): arrivals are not Poisson.
  Mean-value analysis of the closed network (Reiser & Lavenberg, "Mean-Value Analysis of Closed
  Multichain Queuing Networks", J. ACM 27(2), 1980) with Schweitzer's approximation of the arrival theorem
  (Schweitzer 1979; Lazowska et al., "Quantitative System Performance", 1984, section 6.4.2): an arriving
  request sees (C - 1)/C of the prompt queue's mean Q = X (W + S) and waits S for each prompt there,
  W = u rho S / (1 - u rho), u = (C - 1)/C, rho = X S. The decode phase is the network's delay station. With
  D = what is in flight without waiting (the decode batch and the prompts in their own prefill), Little's
  law C = D + X W gives C^2 - (D - rho) C - rho (D - rho) / (1 - rho) = 0. Waiting S per prompt ahead (not
  the residual S/2 of a deterministic server) is exact for a processor-sharing prefill station whatever the
  prompt lengths (BCMP product form: Baskett, Chandy, Muntz, Palacios, J. ACM 22(2), 1975), as chunked
  prefill shares each step's token budget among the prompts present.
* Decode batch in a closed loop: C requests in flight per engine split between prefill and decode; with
  request throughput X and T seconds a step, decode holds X n_dec T requests and prefill X n_pf T, so
  C = B (1 + n_pf / n_dec) (Little's law on each phase), whatever T is.
* Prefill:decode instance ratio: both phases carry the same request rate, n_p c_p = n_d c_d, so
  n_p / n_d = c_d / c_p (Splitwise, Patel et al. ISCA 2024, section 5; DistServe, Zhong et al. OSDI 2024,
  section 4.1).
* KV transfer between disaggregated instances: each prefill GPU sends its shard of the request's KV cache
  over its own link, priced by :class:`hardware.collectives.CollectiveCost` send/recv (NVLink inside one
  scale-up domain, the GPU's NIC share across domains).
* MoE load imbalance: T tokens routed to k of E experts spread evenly over ``ep`` ranks put
  m = T k assignments Multinomial(m, 1/ep) on the ranks; the expected busiest rank holds about
  m/ep + sqrt(2 (m/ep)(1 - 1/ep) ln ep) (Raab & Steger, "Balls into Bins - A Simple and Tight Analysis",
  RANDOM 1998, Theorem 1, case m >> n log n; the (1 - 1/ep) is the binomial variance), at most all m.
* Prefix caching: a hit rate h leaves (1 - h) of the prompt to compute (vLLM automatic prefix caching;
  SGLang RadixAttention, Zheng et al. 2024); the cached tokens still occupy KV cache.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hardware.collectives import Collective, CollectiveCost
from hardware.schema import TopologySpec

from .workload import _phi_inv


def _f(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def little_in_system(rate_per_s: Any, time_in_system_s: Any) -> np.ndarray:
    """L = lambda W: mean requests in the system."""
    return _f(rate_per_s) * _f(time_in_system_s)


def little_rate_per_s(in_system: Any, time_in_system_s: Any) -> np.ndarray:
    """lambda = L / W: the throughput of a closed loop holding L requests that each stay W seconds."""
    w = _f(time_in_system_s)
    return np.divide(_f(in_system), w, out=np.zeros(np.broadcast(w, _f(in_system)).shape), where=w > 0)


def utilisation(rate_per_s: Any, mean_service_s: Any) -> np.ndarray:
    """rho = lambda E[S]; 0 without arrivals, even where a service time is infinite (no chunk budget)."""
    lam, es = _f(rate_per_s), _f(mean_service_s)
    with np.errstate(invalid="ignore"):
        return np.where(lam > 0, lam * es, 0.0)


def mg1_mean_wait_s(rate_per_s: Any, mean_service_s: Any, service_second_moment_s2: Any) -> np.ndarray:
    """Pollaczek-Khinchine mean wait in queue of an M/G/1 server, lambda E[S^2] / (2 (1 - rho));
    infinite at rho >= 1."""
    lam, es2 = _f(rate_per_s), _f(service_second_moment_s2)
    rho = utilisation(lam, mean_service_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = lam * es2 / (2.0 * (1.0 - rho))
    return np.where(rho < 1.0, np.where(lam > 0, wait, 0.0), np.inf)


def md1_mean_wait_s(rate_per_s: Any, service_s: Any) -> np.ndarray:
    """M/D/1 mean wait, rho / (2 mu (1 - rho)) with mu = 1 / service_s (P-K with E[S^2] = S^2)."""
    s = _f(service_s)
    return mg1_mean_wait_s(rate_per_s, s, s * s)


def wait_quantile_s(mean_wait_s: Any, rho: Any, q: Any) -> np.ndarray:
    """Wait at quantile q: 0 when q <= 1 - rho, else (W / rho) ln(rho / (1 - q)) (see the module docstring);
    infinite when the queue is unstable (rho >= 1)."""
    w, rho, q = np.broadcast_arrays(_f(mean_wait_s), _f(rho), _f(q))
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = (w / rho) * np.log(rho / (1.0 - q))
    out = np.where(q <= 1.0 - rho, 0.0, tail)
    return np.where((rho >= 1.0) | ~np.isfinite(w), np.inf, np.where(rho > 0, out, 0.0))


def speculative_tokens_per_step(draft_tokens: Any, acceptance_rate: Any) -> np.ndarray:
    """Expected tokens a verification step emits, (1 - alpha^(k+1)) / (1 - alpha); 1 without drafts."""
    k, a = np.broadcast_arrays(_f(draft_tokens), _f(acceptance_rate))
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = (1.0 - a ** (k + 1.0)) / (1.0 - a)
    return np.where(a < 1.0, tokens, k + 1.0)


def prefill_tokens_after_cache(input_tokens: Any, prefix_cache_hit_rate: Any) -> np.ndarray:
    """Prompt tokens that still have to be computed: (1 - h) of them."""
    return _f(input_tokens) * (1.0 - _f(prefix_cache_hit_rate))


def mixed_step_fraction(rate_per_s: Any, prefill_tokens: Any, chunk_tokens: Any, mean_step_s: Any) -> np.ndarray:
    """Fraction of engine steps that carry a prefill chunk of c tokens: the prompt tokens arriving during a
    mean step over the chunk, lambda s T / c; >= 1 means prefill cannot keep up."""
    c = _f(chunk_tokens)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = _f(rate_per_s) * _f(prefill_tokens) * _f(mean_step_s) / c
    return np.where(c > 0, f, np.where(_f(rate_per_s) > 0, np.inf, 0.0))


def tpot_quantile_s(decode_step_s: Any, chunk_extra_s: Any, mixed_fraction: Any, steps_per_request: Any,
                    tokens_per_step: Any, q: Any) -> np.ndarray:
    """TPOT at quantile q of a request that runs ``steps_per_request`` steps, a Binomial(n, f) number of
    which also carry a prefill chunk costing ``chunk_extra_s`` more: (t_dec + extra x f_q) / tokens per step,
    f_q = clip(f + z_q sqrt(f (1 - f) / n), 0, 1). q = 0.5 gives the mean."""
    f = np.clip(_f(mixed_fraction), 0.0, 1.0)
    n = np.maximum(_f(steps_per_request), 1.0)
    z = _phi_inv(np.clip(_f(q), 1e-9, 1 - 1e-9))
    f_q = np.clip(f + z * np.sqrt(f * (1.0 - f) / n), 0.0, 1.0)
    return (_f(decode_step_s) + _f(chunk_extra_s) * f_q) / _f(tokens_per_step)


def closed_loop_wait(rate_per_s: Any, mean_service_s: Any, in_flight_unqueued: Any) -> tuple[np.ndarray, np.ndarray]:
    """(requests in flight C, mean prompt-queue wait W) of a closed loop running at ``rate_per_s`` whose
    requests spend ``mean_service_s`` each at the prompt queue and of which ``in_flight_unqueued`` are
    decoding or in their own prefill (module docstring: Schweitzer mean-value analysis). rho >= 1: infinite."""
    x, s, d = np.broadcast_arrays(_f(rate_per_s), _f(mean_service_s), _f(in_flight_unqueued))
    rho = x * s
    stable = rho < 1.0
    r = np.where(stable, rho, 0.0)
    e = np.maximum(d - r, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = 0.5 * (e + np.sqrt(e * e + 4.0 * r * e / (1.0 - r)))
        c = np.maximum(c, d)
        wait = np.where(x > 0, (c - d) / x, 0.0)
    return np.where(stable, c, np.inf), np.where(stable, wait, np.inf)


def closed_loop_decode_batch(concurrency: Any, prefill_steps_per_request: Any,
                             decode_steps_per_request: Any) -> np.ndarray:
    """Requests decoding when C are in flight: C / (1 + n_pf / n_dec) (module docstring)."""
    return _f(concurrency) / (1.0 + _f(prefill_steps_per_request) / np.maximum(_f(decode_steps_per_request), 1e-12))


def prefill_decode_ratio(prefill_capacity_per_s: Any, decode_capacity_per_s: Any) -> np.ndarray:
    """Prefill instances per decode instance that balance the phases: c_decode / c_prefill (requests/s each)."""
    return _f(decode_capacity_per_s) / _f(prefill_capacity_per_s)


def instances_for_rate(rate_per_s: Any, capacity_per_instance_per_s: Any) -> np.ndarray:
    """Whole instances needed to carry ``rate_per_s``: ceil(rate / capacity); infinite where capacity is 0."""
    cap = _f(capacity_per_instance_per_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.ceil(_f(rate_per_s) / cap - 1e-9)
    return np.where(cap > 0, np.maximum(need, 0.0), np.inf)


def kv_transfer_time_s(topology: TopologySpec, kv_bytes: Any, sending_gpus: Any, same_domain: Any) -> np.ndarray:
    """Seconds to move one request's KV cache from its prefill instance to its decode instance: every one of
    the prefill instance's ``sending_gpus`` sends its 1/sending_gpus share at once over its own link
    (send/recv over NVLink when ``same_domain``, else over its NIC share)."""
    kv, gpus, inside = np.broadcast_arrays(_f(kv_bytes), _f(sending_gpus), np.asarray(same_domain, dtype=bool))
    cost = CollectiveCost(topology, Collective.SEND_RECV, np.full(kv.shape, 2.0), np.where(inside, 2.0, 1.0))
    return cost.time_s(kv / np.maximum(gpus, 1.0))


def moe_max_load_factor(tokens: Any, top_k: Any, ep: Any) -> np.ndarray:
    """Expected busiest EP rank's routed tokens over the mean, for ``tokens`` tokens each routed to
    ``top_k`` experts uniformly over ``ep`` ranks: 1 + sqrt(2 ln(ep) (1 - 1/ep) / mu), mu = tokens top_k / ep
    (Raab & Steger 1998, module docstring), at most ep (every assignment on one rank); 1 for ep = 1."""
    t, k, e = np.broadcast_arrays(_f(tokens), _f(top_k), _f(ep))
    mu = t * k / np.maximum(e, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = 1.0 + np.sqrt(2.0 * np.log(np.maximum(e, 1.0)) * (1.0 - 1.0 / np.maximum(e, 1.0)) / mu)
    return np.where(e > 1, np.minimum(np.where(mu > 0, factor, e), e), 1.0)


def _normal_sf(z: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal, 1 - Phi(z) = erfc(z / sqrt 2) / 2, with Abramowitz & Stegun 7.1.26's
    erfc (absolute error under 1.5e-7; numpy has no erf)."""
    x = np.abs(z) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erfc = poly * np.exp(-x * x)
    return np.where(z >= 0, 0.5 * erfc, 1.0 - 0.5 * erfc)


POISSON_EXACT_MAX_MEAN = 64.0
"""Largest mean whose padded count :func:`expected_block_padded_rows` sums exactly over the pmf; above it the
normal approximation with continuity correction is within 1% of the tail that matters (skew 1/sqrt(mean)
<= 1/8)."""


def expected_block_padded_rows(mean_rows: Any, block: float) -> np.ndarray:
    """Expected rows an expert's GEMM computes once its received rows are padded to whole blocks of ``block``
    rows, given that it received at least one, when its rows are Poisson with ``mean_rows`` (tokens routed
    uniformly: an expert's count is Binomial(T k, 1/E), Poisson for many tokens and experts):
    E[block ceil(X / block) | X > 0] = block E[ceil(X / block)] / P(X > 0)
    = block sum_{j >= 0} P(X > j block) / P(X > 0).

    A grouped GEMM pads each expert's rows to its tile separately, so the expected padding of a spread of
    counts exceeds the padding of their mean: at a mean of 64 rows and 64-row blocks, half the experts
    receive more than 64 and compute two blocks (about 94 rows on average, not 64).

    Means up to :data:`POISSON_EXACT_MAX_MEAN` sum pmf(i) ceil(i / block) in one pass of the pmf recurrence
    p_i = p_{i-1} mean / i up to mean + 10 sd (the rest is below 1e-20); larger means sum the normal tail
    with continuity correction over the blocks within 8 sd of the mean (those below it count 1 each)."""
    lam = np.maximum(_f(mean_rows), 0.0)
    b = float(block)
    touched = -np.expm1(-lam)                                    # P(X > 0)
    small = lam <= POISSON_EXACT_MAX_MEAN
    blocks = np.zeros_like(lam)                                  # E[ceil(X / block)]
    if small.any():  # computed on the small means only: the arrays hold every plan and batch
        m = lam[small]
        top = int(np.ceil(np.max(m) + 10.0 * np.sqrt(np.max(m)) + 10.0))
        pmf = np.exp(-m)
        exact = np.zeros_like(m)
        for i in range(1, top + 1):
            pmf *= m / i
            exact += pmf * math.ceil(i / b)
        blocks[small] = exact
    if not small.all():
        big = lam[~small]
        spread = 8.0 * np.sqrt(big) + 1.0
        first = np.maximum(np.floor((big - spread) / b), 1.0)    # j = 1 .. first - 1: P(X > j block) = 1
        approx = touched[~small] + (first - 1.0)
        sd = np.sqrt(big)
        for d in range(int(np.max(np.ceil(2.0 * spread / b))) + 2):
            approx += _normal_sf(((first + d) * b + 0.5 - big) / sd)
        blocks[~small] = approx
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lam > 0, b * blocks / np.maximum(touched, 1e-300), 0.0)
