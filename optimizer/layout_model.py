"""The CP-SAT model of parallel layouts: every hard rule of the hardware and the frameworks is a *named*
constraint, and CP-SAT enumerates the layouts that satisfy them all.

Decision variables are the degrees of one layout: GPUs used, tp, cp, pp, dp, ep, expert-tp, virtual
pipeline stages and micro-batch size. Divisibility rules are products, which CP-SAT prices badly, so
each degree is also written as its prime factorisation: one integer exponent per prime. "a divides B"
becomes, for every prime q, ``exp_q(a) <= v_q(B)``, and "tp * cp * pp * dp = N" becomes, for every
prime, ``exp_q(tp) + exp_q(cp) + exp_q(pp) + exp_q(dp) = exp_q(N)``: all linear. A table links each
degree's value with its exponents. This enumerates 10x faster than multiplication constraints.

Every named constraint is enforced by its own literal, so the same model also explains: solving with
the literals as assumptions returns a set of rules that cannot hold together
(:meth:`LayoutModel.conflicting_rules`), and fixing the degrees of a given plan tells which rules it
breaks (:meth:`LayoutModel.broken_rules`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import types
from dataclasses import dataclass

import numpy as np

from cost_model.model_spec import ModelSpec
from cost_model.stages import uneven_split_is_valid
from cost_model.training_spec import TrainingSpec
from hardware.placement import parse_rank_order
from hardware.schema import ClusterSpec

from .search_options import PINNABLE_DEGREES, SearchOptions

LAYOUT_COLUMNS = ("num_gpus", "tp", "cp", "pp", "dp", "ep", "etp")

RULES: dict[str, str] = {
    "world_size": "tp x cp x pp x dp equals the GPUs used",
    "tp_inside_scaleup_domain": "tensor-parallel groups stay inside one NVLink (scale-up) domain",
    "cp_inside_scaleup_domain": "context-parallel groups stay inside one scale-up domain",
    "ep_inside_scaleup_domain": "expert-parallel groups stay inside one scale-up domain",
    "heads_divisible_by_tp": "attention heads divisible by tp",
    "kv_heads_divisible_by_tp": "KV heads divisible by tp, or tp a multiple of them (KV heads replicated)",
    "layers_split_over_stages": "layers divisible by pp, or an uneven split (the first and last stages short of "
                                "the middle ones; an embedding-only first or loss-only last stage allowed)",
    "global_batch_divisible": "global batch divisible by dp",
    "sequence_divisible_by_2cp": "sequence length divisible by 2 x cp (load-balanced causal CP)",
    "cp_needs_flash_attention": "context parallelism needs fused (flash) attention",
    "experts_divisible_by_ep": "routed experts divisible by ep",
    "expert_mesh_folds": "etp x ep divides tp x cp x dp (Megatron MoE parallel folding)",
    "expert_tp_choice": "expert-TP is 1 or equal to tp",
    "dense_model_has_no_ep": "ep and expert-TP are 1 for a dense model",
    **{f"{degree}_pinned": f"{degree} is one of the values pinned with --{degree}" for degree in PINNABLE_DEGREES},
}
"""The ``<degree>_pinned`` rules hold only when the search pins that degree (``SearchOptions.<degree>_values``):
a pin is a constraint like the others, so the enumeration never yields another value and a pin that
leaves no layout is named in the explanation."""


_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)
_MILLER_RABIN_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
"""Witnesses that make Miller-Rabin exact below 3.3 x 10^24 (Sorenson and Webster 2015); above that the
test is a strong-probable-prime test with 13 bases (no known composite passes them all)."""
_TRIAL_LIMIT = 1000
"""Trial division runs up to this bound; what is left has only prime factors above it."""


def _is_prime(n: int) -> bool:
    """Miller-Rabin with the fixed witnesses above (deterministic for every input this tool can see)."""
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in _MILLER_RABIN_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_brent(n: int) -> int:
    """A non-trivial factor of the odd composite n (Brent's variant of Pollard's rho, R. P. Brent 1980:
    expected O(n^(1/4)) steps, about 3 x 10^4 for n near 10^18). Deterministic: the starting points are
    fixed and tried in turn."""
    for c in range(1, 1 << 20):
        y, m, g, r, q = 2, 128, 1, 1, 1
        x = ys = y
        while g == 1:
            x = y
            for _ in range(r):
                y = (y * y + c) % n
            k = 0
            while k < r and g == 1:
                ys = y
                for _ in range(min(m, r - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += m
            r *= 2
        if g == n:  # the batch overshot: step back one at a time
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if g != n:
            return g
    raise ArithmeticError(f"no factor of {n} found")  # unreachable for composite n


@functools.lru_cache(maxsize=4096)
def _factorize(n: int) -> tuple[tuple[int, int], ...]:
    """Prime factorisation of n >= 1 as sorted (prime, exponent) pairs.

    Trial division by the integers up to 1,000, then Miller-Rabin and Pollard-Brent on what is left,
    so a prime near 10^18 or a product of two 10^9-size primes takes milliseconds instead of the
    O(sqrt(n)) (or, for the old divisor scan, O(n)) steps of plain trial division.
    """
    if n < 1:
        raise ValueError(f"cannot factorise {n}")
    factors: dict[int, int] = {}
    q = 2
    while q <= _TRIAL_LIMIT and q * q <= n:
        while n % q == 0:
            factors[q] = factors.get(q, 0) + 1
            n //= q
        q += 1 if q == 2 else 2
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if m < _TRIAL_LIMIT * _TRIAL_LIMIT or _is_prime(m):  # no factor below the trial limit is left
            factors[m] = factors.get(m, 0) + 1
        else:
            f = _pollard_brent(m)
            stack += [f, m // f]
    return tuple(sorted(factors.items()))


def _primes_of(n: int) -> set[int]:
    """The distinct primes dividing n (none for n <= 1)."""
    return {p for p, _ in _factorize(n)} if n >= 1 else set()


def _valuation(n: int, q: int) -> int:
    if n == 0:
        return 64
    count = 0
    while n % q == 0:
        n //= q
        count += 1
    return count


def _divisors(n: int, limit: int) -> list[int]:
    """The divisors of n up to limit, ascending: built from the prime factorisation, so the work is the
    number of divisors (at most 6,720 below 10^12, 103,680 below 10^18), not n."""
    if n < 1:
        return []
    divisors = [1]
    for p, e in _factorize(n):
        divisors = [d * p ** k for d in divisors for k in range(e + 1) if d * p ** k <= limit]
    return sorted(d for d in divisors if d <= limit)


@dataclass
class _Degree:
    value: cp_model.IntVar
    exps: dict[int, cp_model.IntVar]


class SearchIncomplete(RuntimeError):
    """CP-SAT stopped before it had proved its answer (a time limit, a stop request): what it found is a
    part of the layouts, and a part must never be taken for the whole."""


class _DeferredPandas(types.ModuleType):
    """Stands in for pandas while OR-Tools' ``cp_model`` is imported. That module imports pandas (a
    quarter of a second) only for its pandas-indexed helpers (``new_int_var_series`` and the like), which
    this tool never calls; at import time it reads ``pd.Index`` and ``pd.Series`` only to build type hints.
    While the import runs, any attribute is a placeholder class (those hints are never checked); after it,
    any attribute imports the real pandas and is taken from it, so the helpers keep working if called."""

    importing = True

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if _DeferredPandas.importing:
            return type(name, (), {"__module__": "pandas"})
        import pandas

        return getattr(pandas, name)


@contextlib.contextmanager
def _pandas_deferred():
    """Import with ``pandas`` replaced by a :class:`_DeferredPandas` (unless pandas is already loaded)."""
    if "pandas" in sys.modules:
        yield
        return
    sys.modules["pandas"] = _DeferredPandas("pandas")
    try:
        yield
    finally:
        _DeferredPandas.importing = False
        if isinstance(sys.modules.get("pandas"), _DeferredPandas):
            del sys.modules["pandas"]  # the next `import pandas` loads the real one


def _load_solver() -> None:
    """Import OR-Tools on first use. Its module imports pandas and takes about half a second, which the
    commands that never solve (``--help``, ``hardware``, ``models``, ``compare``) should not pay; the
    rule names and :class:`SearchIncomplete` need no solver. Defines the module globals ``cp_model``,
    ``_PROVED`` (solve statuses that are proofs: with enumerate_all_solutions, OPTIMAL means every
    layout was found) and ``_Collector``."""
    if "cp_model" in globals():
        return
    try:
        with _pandas_deferred():
            from ortools.sat.python import cp_model as solver_module
    except Exception:  # an OR-Tools release that uses pandas while importing: pay for the real one
        sys.modules.pop("ortools.sat.python.cp_model", None)
        from ortools.sat.python import cp_model as solver_module

    class _Collector(solver_module.CpSolverSolutionCallback):
        def __init__(self, variables):
            super().__init__()
            self.variables = variables
            self.rows: list[list[int]] = []

        def on_solution_callback(self) -> None:
            self.rows.append([self.Value(v) for v in self.variables])

    globals().update(cp_model=solver_module, _PROVED=(solver_module.OPTIMAL, solver_module.INFEASIBLE),
                     _Collector=_Collector)


def __getattr__(name: str):
    """``layout_model.cp_model``, ``._PROVED`` and ``._Collector`` load the solver (PEP 562)."""
    if name in ("cp_model", "_PROVED", "_Collector"):
        _load_solver()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _require_proof(solver: cp_model.CpSolver, status, what: str) -> None:
    if status not in _PROVED:
        raise SearchIncomplete(f"the layout solver stopped before finishing {what} "
                               f"(status {solver.StatusName(status)}); no result was kept")


class LayoutModel:
    """Builds the CP-SAT model for one scenario (model, training setup, cluster, search options)."""

    def __init__(self, model: ModelSpec, training: TrainingSpec, cluster: ClusterSpec, options: SearchOptions,
                 gpu_counts: tuple[int, ...]):
        self.spec, self.training, self.cluster, self.options = model, training, cluster, options
        self.gpu_counts = tuple(sorted(set(gpu_counts)))
        self.domain = cluster.topology.domain_gpus
        self.order = parse_rank_order(options.rank_order)
        _load_solver()
        self._build()

    # ---- candidate values of each degree ----------------------------------------------------
    def _candidates(self) -> dict[str, list[int]]:
        n_max = max(self.gpu_counts)
        all_divisors = sorted({d for n in self.gpu_counts for d in _divisors(n, n)})
        o, m = self.options, self.spec
        experts = m.num_experts if m.is_moe else 1

        def bounded(name: str, limit: int) -> list[int]:  # a pinned value beyond the search bound is tried
            pinned = set(o.pinned(name))
            return [d for d in all_divisors if d <= limit or d in pinned]

        return {
            "num_gpus": list(self.gpu_counts),
            "tp": bounded("tp", o.max_tp),
            "cp": bounded("cp", o.max_cp),
            "pp": [d for d in bounded("pp", o.max_pp) if d <= m.num_layers],
            "dp": all_divisors,
            "ep": _divisors(experts, n_max),
            "etp": bounded("etp", o.max_tp),
        }

    def _build(self) -> None:
        self.model = cp_model.CpModel()
        cand = self.candidates = self._candidates()
        spec, tr = self.spec, self.training
        consts = [spec.num_attention_heads, spec.num_kv_heads, tr.global_batch_size, tr.seq_length, self.domain,
                  max(spec.num_experts, 1)]
        primes = {2}
        for values in cand.values():
            for v in values:
                primes |= _primes_of(v)
        for c in consts:
            primes |= _primes_of(c)
        self.primes = sorted(primes)

        self.deg: dict[str, _Degree] = {}
        for name, values in cand.items():
            if not values:
                values = [1]
            value = self.model.NewIntVarFromDomain(cp_model.Domain.FromValues(values), name)
            exps = {q: self.model.NewIntVar(0, max(_valuation(v, q) for v in values), f"{name}_e{q}")
                    for q in self.primes}
            table = [[v] + [_valuation(v, q) for q in self.primes] for v in values]
            self.model.AddAllowedAssignments([value] + [exps[q] for q in self.primes], table)
            self.deg[name] = _Degree(value, exps)

        self.literals: dict[str, cp_model.IntVar] = {}
        for rule in RULES:
            self.literals[rule] = self.model.NewBoolVar(rule)
        self._add_rules()

    # ---- helpers ----------------------------------------------------------------------------
    def _e(self, name: str, q: int):
        return self.deg[name].exps[q]

    def _divides(self, rule: str, names: tuple[str, ...], constant: int, extra: dict[int, int] | None = None,
                 enforce: list | None = None) -> None:
        """prod(names) divides constant (times q^extra[q] must still divide it)."""
        literals = [self.literals[rule]] + (enforce or [])
        for q in self.primes:
            lhs = sum(self._e(n, q) for n in names) + (extra or {}).get(q, 0)
            self.model.Add(lhs <= _valuation(constant, q)).OnlyEnforceIf(literals)

    def _greater_than_one(self, name: str) -> cp_model.IntVar:
        flag = self.model.NewBoolVar(f"{name}_gt1")
        self.model.Add(self.deg[name].value >= 2).OnlyEnforceIf(flag)
        self.model.Add(self.deg[name].value == 1).OnlyEnforceIf(flag.Not())
        return flag

    def _add_rules(self) -> None:
        M, L, o, spec, tr = self.model, self.literals, self.options, self.spec, self.training
        # world size: exponents of tp, cp, pp, dp add up to those of the GPUs used
        for q in self.primes:
            M.Add(sum(self._e(n, q) for n in ("tp", "cp", "pp", "dp")) == self._e("num_gpus", q)
                  ).OnlyEnforceIf(L["world_size"])

        # groups inside the scale-up domain: the dimensions up to and including it span a divisor of it
        def inside(rule: str, dims_upto: str, mesh: str) -> None:
            order = self.order
            names: list[str] = []
            for dim in order[: order.index(dims_upto) + 1]:
                if mesh == "dense":
                    names.append({"ep": ""}.get(dim, dim))
                else:
                    names.append({"tp": "etp", "cp": "", "dp": ""}.get(dim, dim))
            names = [n for n in names if n]
            self._divides(rule, tuple(names), self.domain)

        if o.tp_inside_scaleup:
            inside("tp_inside_scaleup_domain", "tp", "dense")
        if o.cp_inside_scaleup:
            inside("cp_inside_scaleup_domain", "cp", "dense")
        if o.ep_inside_scaleup and spec.is_moe:
            inside("ep_inside_scaleup_domain", "ep", "expert")

        self._divides("heads_divisible_by_tp", ("tp",), spec.num_attention_heads)
        # kv heads: tp | kv  or  kv | tp
        kv = spec.num_attention_heads if spec.is_mla else spec.num_kv_heads
        replicate = M.NewBoolVar("kv_replicated")  # tp > kv heads: each KV head on tp/kv ranks
        M.Add(self.deg["tp"].value > kv).OnlyEnforceIf(replicate)
        M.Add(self.deg["tp"].value <= kv).OnlyEnforceIf(replicate.Not())
        for q in self.primes:
            M.Add(self._e("tp", q) <= _valuation(kv, q)).OnlyEnforceIf([L["kv_heads_divisible_by_tp"], replicate.Not()])
            M.Add(self._e("tp", q) >= _valuation(kv, q)).OnlyEnforceIf([L["kv_heads_divisible_by_tp"], replicate])

        # layer split: pp values for which some virtual-stage count splits the layers. Every split valid with
        # vpp chunks is valid with one (L % (pp*vpp) == 0 implies L % pp == 0; first, last >= vpp - 1 >= 0),
        # so vpp = 1 decides; the exact (pp, vpp) rule is checked with the schedule, in optimizer.plan_rules.
        allowed = [p for p in self.candidates["pp"] if self.split_ok(p, 1)]
        M.AddAllowedAssignments([self.deg["pp"].value], [(p,) for p in allowed] or [(0,)]
                                ).OnlyEnforceIf(L["layers_split_over_stages"])
        # dp must divide the global batch for some micro-batch size (exactly: dp x micro-batch divides it)
        self._divides("global_batch_divisible", ("dp",), tr.global_batch_size)

        cp_gt1 = self._greater_than_one("cp")
        self._divides("sequence_divisible_by_2cp", ("cp",), tr.seq_length, extra={2: 1}, enforce=[cp_gt1])
        if not tr.flash_attention:
            M.Add(self.deg["cp"].value == 1).OnlyEnforceIf(L["cp_needs_flash_attention"])

        for degree in PINNABLE_DEGREES:
            pinned = set(o.pinned(degree))
            if pinned:  # only the candidate values among the pins: a range can be wide
                allowed = [(v,) for v in (self.candidates[degree] or [1]) if v in pinned]
                M.AddAllowedAssignments([self.deg[degree].value], allowed or [(0,)]  # (0,): no value, infeasible
                                        ).OnlyEnforceIf(L[f"{degree}_pinned"])

        if spec.is_moe:
            self._divides("experts_divisible_by_ep", ("ep",), spec.num_experts)
            for q in self.primes:
                M.Add(self._e("etp", q) + self._e("ep", q) <= sum(self._e(n, q) for n in ("tp", "cp", "dp"))
                      ).OnlyEnforceIf(L["expert_mesh_folds"])
            etp_is_tp = M.NewBoolVar("etp_is_tp")  # canonical: with tp = 1 both choices are etp = 1
            M.Add(self.deg["tp"].value >= 2).OnlyEnforceIf(etp_is_tp)
            choice = o.expert_tp
            M.Add(self.deg["etp"].value == self.deg["tp"].value).OnlyEnforceIf([L["expert_tp_choice"], etp_is_tp])
            M.Add(self.deg["etp"].value == 1).OnlyEnforceIf([L["expert_tp_choice"], etp_is_tp.Not()])
            if choice == "1":
                M.Add(etp_is_tp == 0).OnlyEnforceIf(L["expert_tp_choice"])
            elif choice == "tp":
                M.Add(self.deg["etp"].value == self.deg["tp"].value).OnlyEnforceIf(L["expert_tp_choice"])
        else:
            M.Add(self.deg["ep"].value == 1).OnlyEnforceIf(L["dense_model_has_no_ep"])
            M.Add(self.deg["etp"].value == 1).OnlyEnforceIf(L["dense_model_has_no_ep"])

    def split_ok(self, pp: int, vpp: int) -> bool:
        """Layers split over pp stages of vpp chunks: evenly, or (if allowed) unevenly at the ends."""
        L = self.spec.num_layers
        if pp > L:
            return False
        if L % (pp * vpp) == 0:
            return True
        if not self.options.uneven_pipeline or pp < 2:
            return False
        return bool(uneven_split_is_valid(L, np.array([pp]), np.array([vpp]))[0])

    # ---- solving ----------------------------------------------------------------------------
    def _solver(self) -> cp_model.CpSolver:
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = 0
        # CP-SAT's own SIGINT handler turns Ctrl-C into a quiet early stop (a partial enumeration that looks
        # complete) and leaves SIGINT at the kernel default after the solve. Without it, Ctrl-C raises
        # KeyboardInterrupt out of Solve (from the solution callback) and the caller's handler stays.
        solver.parameters.catch_sigint_signal = False
        return solver

    def _prove(self, what: str) -> tuple[int, cp_model.CpSolver]:
        """Solve to a proven status (a solution, or infeasible) and return it with its solver; anything
        less (stopped, unknown) raises SearchIncomplete."""
        solver = self._solver()
        status = solver.Solve(self.model)
        if status != cp_model.FEASIBLE:  # a solution is itself a proof that one exists
            _require_proof(solver, status, what)
        return status, solver

    def enumerate_layouts(self, active_rules: set[str] | None = None) -> np.ndarray:
        """All layouts satisfying the rules (all of them by default): an int array (n, len(LAYOUT_COLUMNS)),
        sorted. Fixes the rule literals, so a model answers one query: build a new one for the next."""
        rules = set(RULES) if active_rules is None else active_rules
        for name, literal in self.literals.items():
            self.model.Add(literal == int(name in rules))
        solver = self._solver()
        solver.parameters.enumerate_all_solutions = True
        # The model is pure constraint propagation over small domains: an LP relaxation only slows the
        # enumeration (about 3x on DeepSeek-V3 / 2,048 GPUs) without pruning anything.
        solver.parameters.linearization_level = 0
        variables = [self.deg[c].value for c in LAYOUT_COLUMNS]
        collector = _Collector(variables)
        status = solver.Solve(self.model, collector)
        _require_proof(solver, status, "enumerating the layouts")
        rows = np.array(collector.rows, dtype=np.int64).reshape(-1, len(LAYOUT_COLUMNS))
        order = np.lexsort(rows.T[::-1]) if len(rows) else np.array([], dtype=np.int64)
        return rows[order]

    def conflicting_rules(self, fixed: dict[str, int] | None = None) -> list[str]:
        """A minimal set of rules that together admit no layout (empty if some layout exists).

        CP-SAT's assumption core is a sufficient set; deleting each rule in turn and keeping it only
        if the rest become feasible makes it minimal, so every rule named really binds.
        """
        for name, value in (fixed or {}).items():
            self.model.Add(self.deg[name].value == int(value))
        self.model.ClearAssumptions()
        self.model.AddAssumptions(list(self.literals.values()))
        status, solver = self._prove("explaining why no layout exists")
        if status != cp_model.INFEASIBLE:
            return []
        core_indices = set(solver.SufficientAssumptionsForInfeasibility())
        core = [name for name, literal in self.literals.items() if literal.Index() in core_indices]
        for rule in list(core):
            trial = [r for r in core if r != rule]
            probe = LayoutModel(self.spec, self.training, self.cluster, self.options, self.gpu_counts)
            for name, value in (fixed or {}).items():
                probe.model.Add(probe.deg[name].value == int(value))
            for name, literal in probe.literals.items():
                probe.model.Add(literal == int(name in trial))
            if probe._prove("minimising the conflicting rules")[0] == cp_model.INFEASIBLE:
                core = trial
        return core

    def active_rules(self) -> list[str]:
        """The rules of :data:`RULES` this search applies (a pin rule only where its degree is pinned)."""
        return [rule for rule in RULES if not rule.endswith("_pinned")
                or self.options.pinned(rule.removesuffix("_pinned"))]

    def broken_rules(self, layout: dict[str, int]) -> list[str]:
        """The rules a given layout breaks (each checked alone with the degrees fixed)."""
        broken = []
        for rule in self.active_rules():
            probe = LayoutModel(self.spec, self.training, self.cluster, self.options,
                                (int(layout["num_gpus"]),))
            for name, value in layout.items():
                if name in probe.deg:
                    if value not in probe.candidates[name]:
                        return [f"{name}={value} is not a divisor of the GPU count or is beyond the search bounds"]
                    probe.model.Add(probe.deg[name].value == int(value))
            for other, literal in probe.literals.items():
                probe.model.Add(literal == int(other == rule))
            if probe._prove("checking the plan's rules")[0] == cp_model.INFEASIBLE:
                broken.append(rule)
        return broken
