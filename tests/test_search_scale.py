"""The search at scale: divisors and prime factors of huge numbers, and a search that streams its
candidates in chunks giving exactly the answer of one pass over all of them.

``reference_search`` below is the search as it was before it streamed (commit 85d8791): every candidate
expanded, screened and timed in one pass, all timed plans ranked at once. The streamed search must give
the same ranked plans with the same numbers, the same counts and the same Pareto front, for any chunk
size, including chunks so small that every chunk holds a few plan groups.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from cost_model.evaluate import evaluate
from cost_model.model_loader import build_training, load_model, model_input_from_mapping
from hardware.loader import load_cluster
from optimizer import search as search_module
from optimizer.layout_model import LayoutModel, _divisors, _factorize, _is_prime, _primes_of
from optimizer.ranking import (best_per_layout, effective_gpu_seconds_per_token, effective_tokens_per_s, pareto_front,
                               rank_order)
from optimizer.search import (Scenario, candidate_groups, expand_recompute, group_chunks, recompute_options,
                              screen_memory, search)
from optimizer.search_options import SearchOptions

# ---- divisors and primes -------------------------------------------------------------------------


def _brute_divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def _brute_primes(n: int) -> set[int]:
    primes, q = set(), 2
    while q * q <= n:
        while n % q == 0:
            primes.add(q)
            n //= q
        q += 1
    if n > 1:
        primes.add(n)
    return primes


def test_divisors_and_primes_match_brute_force_for_small_n():
    for n in range(1, 2000):
        divisors = _brute_divisors(n, n)
        assert _divisors(n, n) == divisors, n
        assert _primes_of(n) == _brute_primes(n), n
        for limit in (0, 1, 2, 7, n // 3):
            assert _divisors(n, limit) == [d for d in divisors if d <= limit], (n, limit)
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randrange(2000, 10**6)
        assert _divisors(n, n) == _brute_divisors(n, n), n
        assert _primes_of(n) == _brute_primes(n), n


def test_is_prime_matches_trial_division():
    for n in range(0, 20000):
        assert _is_prime(n) == (n >= 2 and _brute_primes(n) == {n}), n


P61 = 2**61 - 1  # Mersenne primes
P89 = 2**89 - 1
HUGE = [
    10**12, 10**18, 10**23, 2**60, 3**37, 999_999_999_999_999_989,  # the largest prime below 10^18
    (10**9 + 7) * (10**9 + 9),          # two 10^9-size primes: the worst case of trial division
    (10**11 + 3) * (10**11 + 19),       # about 10^22
    P61, P61 * (10**9 + 7), P89, 10**23 + 1, 2**64 + 1, 6_700_417 * 641 * (10**6 + 3) ** 2,
]


@pytest.mark.parametrize("n", HUGE, ids=[str(n) for n in HUGE])
def test_factorisation_of_huge_numbers_is_complete_and_prime(n):
    factors = _factorize(n)
    assert math.prod(p**e for p, e in factors) == n
    assert [p for p, _ in factors] == sorted({p for p, _ in factors})
    for p, e in factors:
        assert e >= 1 and _is_prime(p)
        # a factor below 10^6 is checked by trial division as well
        if p < 10**6:
            assert _brute_primes(p) == {p}
    divisors = _divisors(n, n)
    assert len(divisors) == math.prod(e + 1 for _, e in factors)
    assert divisors == sorted(set(divisors)) and divisors[0] == 1 and divisors[-1] == n
    assert all(n % d == 0 for d in divisors)
    assert _divisors(n, 10**6) == [d for d in divisors if d <= 10**6]


def test_known_factorisations():
    assert _factorize((10**9 + 7) * (10**9 + 9)) == ((10**9 + 7, 1), (10**9 + 9, 1))
    assert _factorize(10**23) == ((2, 23), (5, 23))
    assert _factorize(P61 * (10**9 + 7)) == ((10**9 + 7, 1), (P61, 1))
    assert _factorize(2**64 + 1) == ((274177, 1), (67280421310721, 1))
    assert _primes_of(1) == set() and _divisors(1, 1) == [1]


def test_layout_model_builds_for_a_huge_prime_batch_and_sequence():
    """The CP-SAT model factorises the global batch and the sequence: a prime near 10^18 and a 10^23
    token sequence must not stall the build (it used trial division up to sqrt(n))."""
    model = load_model("llama3-8b")
    training = build_training({"seq_length": 8192, "global_batch_size": 512}, model=model.spec)
    # past the input bounds (refused up front since issue 20), set behind their back: the layout model
    # itself must still not hang
    object.__setattr__(training, "global_batch_size", 999_999_999_999_999_989)
    object.__setattr__(training, "seq_length", 10**23)
    cluster = load_cluster("h100x64")
    layouts = LayoutModel(model.spec, training, cluster, SearchOptions(), (64,)).enumerate_layouts()
    assert len(layouts) and set(layouts[:, 4]) == {1}  # a prime batch: dp = 1 only


# ---- streamed search against the one-pass reference ---------------------------------------------

def reference_search(scenario: Scenario, pareto: bool = False):
    """The one-pass search of commit 85d8791: (ranked PlanMetrics or None, counts, Pareto PlanMetrics)."""
    layouts = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                          scenario.gpu_counts).enumerate_layouts()
    groups = candidate_groups(scenario, layouts)
    plans, option_valid = expand_recompute(scenario, groups)
    n_groups, n_options = option_valid.shape
    fits, min_memory = screen_memory(scenario, plans, option_valid, recompute_options(scenario))
    any_fit = fits.any(axis=1)
    if scenario.options.objective == "memory_headroom":
        chosen = n_options - 1 - np.argmax(fits[:, ::-1], axis=1)
    else:
        chosen = np.argmax(fits, axis=1)
    index = (np.arange(n_groups) * n_options + chosen)[any_fit]
    timed = plans.take(index)
    counts = dict(layouts=len(layouts), candidates=int(option_valid.sum()), feasible=int(fits.sum()),
                  timed=len(index), min_memory=min_memory)
    if not len(index):
        return None, counts, None
    metrics = evaluate(scenario.model, scenario.training, scenario.cluster, timed, scenario.costs)
    order = rank_order(metrics, scenario.cluster, scenario.options.objective)
    if scenario.options.best_per_layout:
        order = best_per_layout(order, metrics)
    ranked = evaluate(scenario.model, scenario.training, scenario.cluster,
                      timed.take(order[: scenario.options.top_k]), scenario.costs)
    front = None
    if pareto:
        cost = effective_gpu_seconds_per_token(metrics) * (scenario.cluster.economics.price_per_gpu_hour_usd or 1.0)
        chosen_front = pareto_front(1.0 / effective_tokens_per_s(metrics), cost)[: scenario.options.top_k]
        front = evaluate(scenario.model, scenario.training, scenario.cluster, timed.take(chosen_front),
                         scenario.costs)
    return ranked, counts, front


def _scenario(model: str, cluster: str, seq: int, batch: int, gpus=(), **options) -> Scenario:
    model_input = load_model(model)
    training = build_training({"seq_length": seq, "global_batch_size": batch}, model=model_input.spec)
    return Scenario(model=model_input.spec, training=training, cluster=load_cluster(cluster),
                    options=SearchOptions(gpu_counts=tuple(gpus), **options))


TINY_MOE = {
    "name": "tiny-moe", "model_type": "mixtral", "num_hidden_layers": 4, "hidden_size": 1024,
    "intermediate_size": 2816, "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000,
    "num_local_experts": 8, "num_experts_per_tok": 2, "hidden_act": "silu", "tie_word_embeddings": False,
}

SCENARIOS = {
    "dense": lambda: _scenario("llama3-70b", "h100x64", 8192, 128, top_k=7),
    "dense gpu range": lambda: _scenario("llama3-8b", "h100x256", 8192, 512, (64, 128, 256), top_k=5),
    "dense per layout, cost": lambda: _scenario("llama3-70b", "h100x256", 4096, 256, (128, 256), top_k=6,
                                                best_per_layout=True, objective="cost_per_token"),
    "dense memory headroom, offload": lambda: _scenario("llama3-8b", "h100x64", 8192, 256, (32, 64),
                                                        objective="memory_headroom", allow_offload=True),
    "moe gpu range": lambda: _scenario("mixtral-8x7b", "h100x64", 4096, 256, (16, 32, 64), top_k=8),
    "moe mfu per layout": lambda: _scenario("qwen3-30b-a3b", "h100x64", 4096, 128, (32, 64),
                                            objective="mfu", best_per_layout=True),
    "tiny moe": lambda: Scenario(model_input_from_mapping(TINY_MOE).spec,
                                 build_training({"seq_length": 2048, "global_batch_size": 32}),
                                 load_cluster("h100x16"), SearchOptions(top_k=12)),
}


def _same_metrics(a, b) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    assert len(a) == len(b)
    for name, column in a.plans.to_columns().items():
        np.testing.assert_array_equal(column, getattr(b.plans, name), err_msg=name)
    for name in ("memory_bytes", "step_time_s", "tokens_per_s", "mfu", "cost_usd", "time_to_train_s"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _same_as_reference(result, reference) -> None:
    ranked, counts, front = reference
    _same_metrics(result.ranked, ranked)
    _same_metrics(result.pareto, front)
    assert result.num_layouts == counts["layouts"]
    assert result.num_candidates == counts["candidates"]
    assert result.num_feasible == counts["feasible"]
    assert result.num_timed == counts["timed"]
    np.testing.assert_equal(result.min_memory_bytes, counts["min_memory"])


@pytest.fixture(scope="module")
def references():
    return {}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_streamed_search_equals_one_pass_reference(name, references):
    scenario = SCENARIOS[name]()
    reference = reference_search(scenario, pareto=True)
    assert reference[0] is not None and len(reference[0]) == min(scenario.options.top_k, reference[1]["timed"])
    small = 60 if name == "tiny moe" else 20000  # a few plan groups per chunk; some tens of chunks
    for chunk in (None, search_module.CHUNK_PLANS, small):
        _same_as_reference(search(scenario, pareto=True, chunk_plans=chunk), reference)


def test_chunks_really_split_the_work():
    """The equality above tests streaming only if the small chunk sizes cut the candidates into many
    chunks, and the concatenated chunks are the candidate groups in their order."""
    scenario = SCENARIOS["moe gpu range"]()
    layouts = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                          scenario.gpu_counts).enumerate_layouts()
    whole = candidate_groups(scenario, layouts)
    for max_groups in (97, 1000):
        chunks = list(group_chunks(scenario, layouts, max_groups))
        assert len(chunks) > len(whole["tp"]) / max_groups - 1 and len(chunks) > 3
        assert all(0 < len(c["tp"]) <= max_groups for c in chunks)
        for name, column in whole.items():
            np.testing.assert_array_equal(np.concatenate([c[name] for c in chunks]), column)


def test_streamed_search_is_exact_when_the_scale_outgrows_the_margin(monkeypatch):
    """A search over a GPU range sees the fastest plans (the rounding scale of throughput) last. With no
    margin for the scale to grow, plans dropped early may have tied under the final scale: the search
    must notice and repeat with the scale known, and still equal the reference."""
    scenario = SCENARIOS["dense gpu range"]()
    reference = reference_search(scenario, pareto=True)
    passes = []
    original = search_module._search

    def counted(*args, **kwargs):
        passes.append(kwargs.get("known_scale"))
        return original(*args, **kwargs)

    monkeypatch.setattr(search_module, "SCALE_GROWTH", 1.0)
    monkeypatch.setattr(search_module, "_search", counted)
    _same_as_reference(search(scenario, pareto=True, chunk_plans=20000), reference)
    assert len(passes) == 2 and passes[0] is None and passes[1] > 0


def test_rounding_ties_decided_by_the_scale_of_all_plans():
    """The ranking rounds the objective against its largest magnitude over all timed plans, so whether
    two nearly equal plans tie can depend on a plan far away. Keeping the top K of each chunk by that
    chunk's own scale would break such ties differently; the running top K ranks with the scale of all."""
    from optimizer.search import _TopPlans

    scenario = SCENARIOS["dense"]()
    layouts = LayoutModel(scenario.model, scenario.training, scenario.cluster, scenario.options,
                          scenario.gpu_counts).enumerate_layouts()
    plans, _ = expand_recompute(scenario, candidate_groups(scenario, layouts))
    near = evaluate(scenario.model, scenario.training, scenario.cluster, plans.take(np.arange(40)), scenario.costs)
    assert near.memory_bytes.min() > 4e9
    # 5e-9 of the scale apart at a scale of 1,000 tokens/s; 5e-11 apart (a tie) at 100,000
    near.tokens_per_s[:] = 1000.0
    near.tokens_per_s[:3] = [1000.0 + 5e-6, 1000.0 + 10e-6, 1000.0 + 15e-6]
    near.memory_bytes[:3] = [1e9, 2e9, 3e9]
    far = evaluate(scenario.model, scenario.training, scenario.cluster, plans.take(np.arange(40, 41)),
                   scenario.costs)
    far.tokens_per_s[:] = 100_000.0

    def tp_pp_dp(p):
        return list(zip(p.tp, p.pp, p.dp, p.zero_stage, p.micro_batch, p.recompute, p.sequence_parallel))

    top = _TopPlans("throughput", 3, False)
    top.add(near)
    assert tp_pp_dp(top.best()) == tp_pp_dp(near.plans.take(np.array([2, 1, 0])))  # fastest first
    top = _TopPlans("throughput", 4, False)
    top.add(near)
    top.add(far)
    best = top.best()  # the far plan, then the three tied ones by memory
    assert tp_pp_dp(best) == tp_pp_dp(far.plans) + tp_pp_dp(near.plans.take(np.array([0, 1, 2])))


def test_gpu_range_equals_the_best_of_each_gpu_count():
    """A search over several GPU counts ranks the union of the plans of each count: its top K are the
    best of the per-count top K lists, merged, and its counts are their sums."""
    counts = (16, 32, 64)
    scenario = _scenario("mixtral-8x7b", "h100x64", 4096, 256, counts, top_k=8)
    whole = search(scenario, chunk_plans=20000)
    singles = [search(_scenario("mixtral-8x7b", "h100x64", 4096, 256, (n,), top_k=8)) for n in counts]
    assert whole.num_layouts == sum(s.num_layouts for s in singles)
    assert whole.num_candidates == sum(s.num_candidates for s in singles)
    assert whole.num_feasible == sum(s.num_feasible for s in singles)
    assert whole.num_timed == sum(s.num_timed for s in singles)
    assert whole.min_memory_bytes == min(s.min_memory_bytes for s in singles)
    merged = [(float(-m.tokens_per_s[i]), float(m.memory_bytes[i]), int(m.plans.num_gpus[i]))
              for m in (s.ranked for s in singles) for i in range(len(m))]
    merged.sort()
    got = [(float(-whole.ranked.tokens_per_s[i]), float(whole.ranked.memory_bytes[i]),
            int(whole.ranked.plans.num_gpus[i])) for i in range(len(whole.ranked))]
    assert got == merged[: len(got)]
    assert len({g for _, _, g in got}) >= 1


def test_the_solver_loads_without_pandas_and_pandas_still_works_after():
    """OR-Tools' cp_model imports pandas (a quarter of a second) for helpers this tool never calls; the
    layout model imports it with pandas deferred. In a fresh interpreter: no pandas after loading the
    solver, a real pandas when asked for later, and OR-Tools' own ``pd`` then resolves to it."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from optimizer import layout_model\n"
            "assert 'ortools' not in sys.modules\n"
            "layout_model._load_solver()\n"
            "assert 'ortools' in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)\n"
            "import pandas\n"
            "assert pandas.DataFrame({'a': [1]}).shape == (1, 1)\n"
            "assert layout_model.cp_model.pd.Series is pandas.Series\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_or_tools_that_needs_pandas_while_importing_gets_the_real_one():
    """If a later OR-Tools release touches pandas at import in a way the stand-in cannot answer, the
    solver is imported again with the real pandas rather than failing."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from optimizer import layout_model\n"
            "def refuse(self, name):\n"
            "    raise RuntimeError('this OR-Tools reads pandas at import')\n"
            "layout_model._DeferredPandas.__getattr__ = refuse\n"
            "layout_model._load_solver()\n"
            "assert 'pandas' in sys.modules and not isinstance(sys.modules['pandas'], layout_model._DeferredPandas)\n"
            "assert layout_model.cp_model.CpSolver() is not None\n")
    subprocess.run([sys.executable, "-c", code], check=True)
