"""What a serving fleet is asked to do: request lengths, arrivals, prefix-cache hits, latency SLOs.

A workload is a YAML file or a preset name (``cost_model/presets/workloads.yaml``)::

    name: my-chat                    # optional; defaults to the file name
    preset: chat-1k-1k               # optional: start from a preset and change some fields
    input_tokens: 1000               # a number: every prompt this long (fixed ISL, as trtllm-bench's tables)
    output_tokens: {p50: 300, p99: 2000, max: 4096}   # or a distribution (a lognormal through p50 and p99)
    # output_tokens: {mean: 294.45, max: 1024}        # or a mean only (every request at the mean)
    # trace: requests.csv            # or a trace: CSV or JSONL rows of input_tokens,output_tokens
    prefix_cache_hit_rate: 0.3       # fraction of prompt tokens found in the prefix cache
    request_rate_per_s: 5            # open loop: Poisson arrivals at this rate (the whole fleet) ...
    # concurrency: 64                # ... or closed loop: this many requests in flight; neither = max load
    slo: {ttft_ms: 2000, tpot_ms: 200, percentile: 99, attainment: 0.99}
    speculative: {draft_tokens: 3, acceptance_rate: 0.7}
    max_model_len: 4096              # default: the longest prompt plus the longest output

Every problem is one :class:`~hardware.errors.InputError` line naming the file, the field and the fix.

Length distributions. A ``{p50, p99}`` pair fixes a lognormal: ln L ~ N(mu, sigma^2) with
mu = ln p50 and sigma = (ln p99 - ln p50) / z_0.99, z_0.99 = 2.3263 (the standard normal quantile), the
usual fit of request lengths (ShareGPT and production traces are right-skewed and roughly lognormal:
Splitwise, Patel et al. ISCA 2024, Fig. 3; DistServe, Zhong et al. OSDI 2024, section 6.1). With ``max``
the lognormal is truncated there (the engine cuts at max_tokens), and its mean and second moment are the
closed forms of E[min(L, c)] and E[min(L, c)^2] (below). A trace is read whole (at most
:data:`MAX_TRACE_ROWS` rows, a deterministic subsample beyond that) and its empirical moments and
quantiles are used.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from hardware.errors import InputError, did_you_mean
from hardware.yaml_input import _read_text, checked_path, load_yaml_text, names_existing_file, read_mapping_file

Z_99 = 2.3263478740408408
"""Standard normal quantile at 0.99 (Phi^-1(0.99)): sigma of the lognormal through p50 and p99."""

MAX_TRACE_ROWS = 100_000
"""Rows of a trace used; a longer trace is subsampled with a fixed seed (deterministic outputs)."""

MAX_TOKENS = 10_000_000
"""Largest request length accepted (10M tokens, past any model's context window): a bound on typos."""


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _phi_inv(p: np.ndarray) -> np.ndarray:
    """Standard normal quantile (Acklam's rational approximation, |relative error| < 1.2e-9; P. J. Acklam,
    "An algorithm for computing the inverse normal cumulative distribution function", 2003)."""
    p = np.asarray(p, dtype=np.float64)
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
         -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
         -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
         4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00)
    low, high = 0.02425, 1 - 0.02425
    q = np.where((p > low) & (p < high), p - 0.5, 0.0)
    r = q * q
    central = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
              (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    tail_p = np.clip(np.where(p <= low, p, 1 - p), 1e-300, 0.5)
    s = np.sqrt(-2 * np.log(tail_p))
    tail = (((((c[0] * s + c[1]) * s + c[2]) * s + c[3]) * s + c[4]) * s + c[5]) / \
           ((((d[0] * s + d[1]) * s + d[2]) * s + d[3]) * s + 1)
    return np.where(p <= low, tail, np.where(p >= high, -tail, central))


@dataclass(frozen=True)
class LengthSpec:
    """Tokens per request of one kind (prompt or output): fixed, lognormal (p50, p99) or a trace."""

    mean_tokens: float | None = None
    """Every request this long (fixed lengths); with ``max_tokens`` only a mean is known."""
    p50_tokens: float | None = None
    """Median of a lognormal distribution (with ``p99_tokens``)."""
    p99_tokens: float | None = None
    """99th percentile of a lognormal distribution (with ``p50_tokens``)."""
    max_tokens: float | None = None
    """Longest request: truncates the lognormal there; with a mean, the bound max_model_len is sized for."""
    samples: tuple[float, ...] | None = None
    """Lengths read from a trace (empirical distribution)."""

    def __post_init__(self) -> None:
        given = [self.mean_tokens is not None, self.p50_tokens is not None or self.p99_tokens is not None,
                 self.samples is not None]
        if sum(given) != 1:
            raise ValueError("give one of: a mean (a number), p50 and p99, or a trace")
        if given[1] and (self.p50_tokens is None or self.p99_tokens is None):
            raise ValueError("a distribution needs both p50 and p99")
        for name in ("mean_tokens", "p50_tokens", "p99_tokens", "max_tokens"):
            value = getattr(self, name)
            if value is not None and not (1 <= value <= MAX_TOKENS):
                raise ValueError(f"{name.removesuffix('_tokens')} must be between 1 and {MAX_TOKENS:,} tokens, "
                                 f"got {value!r}")
        if given[1] and self.p99_tokens < self.p50_tokens:
            raise ValueError(f"p99 ({self.p99_tokens:g}) must be at least p50 ({self.p50_tokens:g})")
        if self.max_tokens is not None:
            low = self.mean_tokens if given[0] else self.p50_tokens if given[1] else None
            if low is not None and self.max_tokens < low:
                raise ValueError(f"max ({self.max_tokens:g}) must be at least the mean/p50 ({low:g})")
        if self.samples is not None and (len(self.samples) == 0 or min(self.samples) < 1):
            raise ValueError("a trace needs at least one row and lengths of at least 1 token")

    @property
    def kind(self) -> str:
        return "fixed" if self.mean_tokens is not None else "lognormal" if self.p50_tokens is not None else "trace"

    @property
    def _mu_sigma(self) -> tuple[float, float]:
        mu = math.log(self.p50_tokens)
        return mu, (math.log(self.p99_tokens) - mu) / Z_99

    def mean(self) -> float:
        """E[L] in tokens. Truncated lognormal: E[min(L, c)] = e^(mu + s^2/2) Phi((ln c - mu - s^2)/s)
        + c (1 - Phi((ln c - mu)/s)) (the partial expectation of a lognormal)."""
        return self._moment(1)

    def second_moment(self) -> float:
        """E[L^2] in tokens^2 (M/G/1 waits need it). Truncated lognormal: e^(2 mu + 2 s^2) Phi((ln c - mu
        - 2 s^2)/s) + c^2 (1 - Phi((ln c - mu)/s))."""
        return self._moment(2)

    def _moment(self, k: int) -> float:
        if self.kind == "fixed":
            return float(self.mean_tokens) ** k
        if self.kind == "trace":
            return float(np.mean(np.asarray(self.samples, dtype=np.float64) ** k))
        mu, sigma = self._mu_sigma
        full = math.exp(k * mu + 0.5 * k * k * sigma * sigma)
        if self.max_tokens is None:
            return full
        if sigma == 0.0:
            return min(math.exp(mu), self.max_tokens) ** k
        cap = math.log(self.max_tokens)
        below = full * _phi((cap - mu - k * sigma * sigma) / sigma)
        return below + self.max_tokens ** k * (1 - _phi((cap - mu) / sigma))

    def quantile(self, q: Any) -> np.ndarray:
        """Length at quantile(s) ``q`` in [0, 1] (fixed: the mean at every q; trace: linear interpolation)."""
        q = np.asarray(q, dtype=np.float64)
        if self.kind == "fixed":
            return np.full(q.shape, float(self.mean_tokens))
        if self.kind == "trace":
            return np.quantile(np.asarray(self.samples, dtype=np.float64), q)
        mu, sigma = self._mu_sigma
        value = np.exp(mu + sigma * _phi_inv(np.clip(q, 1e-12, 1 - 1e-12)))
        return np.minimum(value, self.max_tokens) if self.max_tokens is not None else value

    def longest(self) -> float:
        """The length max_model_len is sized for: max where given, else the trace's longest row, else p99."""
        if self.max_tokens is not None:
            return float(self.max_tokens)
        if self.kind == "trace":
            return float(max(self.samples))
        return float(self.mean_tokens if self.kind == "fixed" else self.p99_tokens)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.mean_tokens:g}" + (f" (max {self.max_tokens:g})" if self.max_tokens else "")
        if self.kind == "trace":
            return f"trace of {len(self.samples):,} (mean {self.mean():.0f})"
        cap = f" (max {self.max_tokens:g})" if self.max_tokens else ""
        return f"p50 {self.p50_tokens:g} / p99 {self.p99_tokens:g}{cap}"


@dataclass(frozen=True)
class SLOSpec:
    """Latency targets: TTFT and TPOT at a percentile, with the fraction of requests that must meet both."""

    ttft_ms: float
    """Time to first token target, milliseconds (arrival to first output token, queueing included)."""
    tpot_ms: float
    """Time per output token target, milliseconds: (end-to-end latency - TTFT) / (output tokens - 1) per
    request, as vLLM's benchmark and MLPerf LoadGen define it."""
    percentile: float = 99.0
    """The percentile each target binds (MLPerf Server: 99th percentile of TTFT and of TPOT)."""
    attainment: float | None = None
    """Fraction of requests that must meet both targets at once (DistServe's SLO attainment); None = the
    percentile's fraction. Each metric is then checked at max(percentile, 1 - (1 - attainment)/2): by the
    union bound, P(both met) >= 1 - P(TTFT missed) - P(TPOT missed) >= attainment."""

    def __post_init__(self) -> None:
        if not (self.ttft_ms > 0 and math.isfinite(self.ttft_ms)):
            raise ValueError(f"ttft_ms must be a positive number of milliseconds, got {self.ttft_ms!r}")
        if not (self.tpot_ms > 0 and math.isfinite(self.tpot_ms)):
            raise ValueError(f"tpot_ms must be a positive number of milliseconds, got {self.tpot_ms!r}")
        if not (50.0 <= self.percentile < 100.0):
            raise ValueError(f"percentile must lie in [50, 100), got {self.percentile!r}")
        if self.attainment is not None and not (0.5 <= self.attainment < 1.0):
            raise ValueError(f"attainment must be a fraction in [0.5, 1), got {self.attainment!r}")

    @property
    def quantile(self) -> float:
        """The quantile (fraction) at which each metric is checked (see ``attainment``)."""
        q = self.percentile / 100.0
        return q if self.attainment is None else max(q, 1.0 - (1.0 - self.attainment) / 2.0)


@dataclass(frozen=True)
class SpeculativeSpec:
    """Speculative decoding as an input: the draft length and the per-token acceptance rate."""

    draft_tokens: int = 0
    """Tokens proposed per step (k; vLLM ``num_speculative_tokens``); 0 = no speculative decoding."""
    acceptance_rate: float = 0.0
    """Probability alpha that each drafted token is accepted (i.i.d., as Leviathan et al. 2023 assume)."""

    def __post_init__(self) -> None:
        if not (0 <= self.draft_tokens <= 64) or int(self.draft_tokens) != self.draft_tokens:
            raise ValueError(f"draft_tokens must be a whole number in [0, 64], got {self.draft_tokens!r}")
        if not (0.0 <= self.acceptance_rate < 1.0):
            raise ValueError(f"acceptance_rate must be a fraction in [0, 1), got {self.acceptance_rate!r}")


@dataclass(frozen=True)
class WorkloadSpec:
    """Requests and the service they are promised (see the module docstring for the file format)."""

    name: str
    """Workload name, shown in reports."""
    input_tokens: LengthSpec
    """Prompt tokens per request."""
    output_tokens: LengthSpec
    """Generated tokens per request."""
    prefix_cache_hit_rate: float = 0.0
    """Fraction of prompt tokens served from the prefix cache (not recomputed; still held in the KV cache)."""
    request_rate_per_s: float | None = None
    """Open loop: Poisson arrivals at this many requests/s to the whole fleet."""
    concurrency: int | None = None
    """Closed loop: this many requests in flight in the whole fleet (a new one as each finishes)."""
    slo: SLOSpec | None = None
    """Latency targets; None = none (a max-load throughput workload)."""
    speculative: SpeculativeSpec = field(default_factory=SpeculativeSpec)
    """Speculative decoding (draft length, acceptance rate); default none."""
    max_model_len: int | None = None
    """Longest context an engine admits (vLLM ``--max-model-len``); None = longest prompt + longest output."""
    source: str = ""
    """Where the workload came from (file or preset), for messages."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.prefix_cache_hit_rate < 1.0):
            raise ValueError(f"prefix_cache_hit_rate must be a fraction in [0, 1), got {self.prefix_cache_hit_rate!r}")
        if self.request_rate_per_s is not None and self.concurrency is not None:
            raise ValueError("give request_rate_per_s (open loop) or concurrency (closed loop), not both")
        if self.request_rate_per_s is not None and not (0 < self.request_rate_per_s < 1e9):
            raise ValueError(f"request_rate_per_s must be a positive rate, got {self.request_rate_per_s!r}")
        if self.concurrency is not None and not (1 <= self.concurrency <= 10_000_000):
            raise ValueError(f"concurrency must be a whole number of requests >= 1, got {self.concurrency!r}")
        if self.max_model_len is not None and self.max_model_len < self.input_tokens.longest() + 1:
            raise ValueError(f"max_model_len ({self.max_model_len}) is shorter than the longest prompt plus one "
                             f"token ({self.input_tokens.longest():g} + 1)")

    @property
    def arrival(self) -> str:
        """'open' (Poisson rate), 'closed' (concurrency) or 'max_load' (neither)."""
        if self.request_rate_per_s is not None:
            return "open"
        return "closed" if self.concurrency is not None else "max_load"

    @property
    def model_len(self) -> int:
        """max_model_len, or the longest prompt plus the longest output."""
        if self.max_model_len is not None:
            return int(self.max_model_len)
        return int(math.ceil(self.input_tokens.longest() + self.output_tokens.longest()))

    @property
    def prefill_tokens_mean(self) -> float:
        """Prompt tokens computed per request: the prefix-cache hits are not recomputed."""
        return self.input_tokens.mean() * (1.0 - self.prefix_cache_hit_rate)

    def with_changes(self, **changes: Any) -> "WorkloadSpec":
        return replace(self, **changes)

    def describe(self) -> str:
        load = (f"{self.request_rate_per_s:g} req/s Poisson" if self.arrival == "open"
                else f"{self.concurrency} in flight" if self.arrival == "closed"
                else "at goodput" if self.slo else "max load")
        slo = (f", SLO p{self.slo.percentile:g} TTFT {self.slo.ttft_ms:g} ms TPOT {self.slo.tpot_ms:g} ms"
               if self.slo else "")
        return f"{self.name}: ISL {self.input_tokens.describe()}, OSL {self.output_tokens.describe()}, {load}{slo}"


# ---------------------------------------------------------------------------------------------- loading

_TOP_FIELDS = {"name", "preset", "description", "source", "input_tokens", "output_tokens", "trace",
               "prefix_cache_hit_rate", "request_rate_per_s", "concurrency", "slo", "speculative", "max_model_len"}
_LENGTH_FIELDS = {"mean": "mean_tokens", "p50": "p50_tokens", "p99": "p99_tokens", "max": "max_tokens"}
_SLO_FIELDS = {"ttft_ms", "tpot_ms", "percentile", "attainment"}
_SPEC_FIELDS = {"draft_tokens", "acceptance_rate"}
_FILE_SUFFIXES = (".yaml", ".yml", ".json")


@lru_cache(maxsize=1)
def _preset_table() -> dict[str, dict[str, Any]]:
    text = resources.files("cost_model").joinpath("presets/workloads.yaml").read_text(encoding="utf-8")
    return load_yaml_text(text, "cost_model/presets/workloads.yaml")


def list_workload_presets() -> list[str]:
    """Names of the shipped workload presets."""
    return sorted(_preset_table())


def workload_preset_description(name: str) -> str:
    return str(_preset_table().get(name, {}).get("description", ""))


def load_workload(source: str | Path) -> WorkloadSpec:
    """A validated workload from a YAML/JSON path or a preset name (:func:`list_workload_presets`)."""
    text = str(source)
    if not isinstance(source, Path) and not text.strip():
        raise InputError("workload", "", "the workload name is empty",
                         f"give a preset ({', '.join(list_workload_presets())}) or a workload YAML path")
    if (isinstance(source, Path) or text.lower().endswith(_FILE_SUFFIXES) or "/" in text or "\\" in text
            or names_existing_file(text)):
        path = checked_path(source, "workload")
        return workload_from_mapping(read_mapping_file(path), source=text, default_name=path.stem, base_dir=path.parent)
    return workload_from_mapping({"preset": text}, source="workload", default_name=text)


def workload_from_mapping(config: Mapping[str, Any], source: str = "workload", default_name: str = "workload",
                          base_dir: Path | None = None) -> WorkloadSpec:
    """Build a :class:`WorkloadSpec` from a parsed workload mapping (``preset:`` merged under the file's fields)."""
    config = dict(config)
    for key in config:
        if key not in _TOP_FIELDS:
            raise InputError(source, str(key), f"unknown field{did_you_mean(str(key), _TOP_FIELDS)}",
                             f"valid fields: {', '.join(sorted(_TOP_FIELDS - {'source', 'description'}))}")
    name = config.pop("name", None)
    preset = config.pop("preset", None)
    if preset is not None:
        table = _preset_table()
        if not isinstance(preset, str) or preset not in table:
            raise InputError(source, "preset", f"unknown workload preset {preset!r}{did_you_mean(str(preset), table)}",
                             f"use one of: {', '.join(sorted(table))}, or a workload YAML path")
        base = {k: v for k, v in table[preset].items() if k not in ("description", "source")}
        if "trace" in config:  # a trace replaces the preset's lengths
            base.pop("input_tokens", None), base.pop("output_tokens", None)
        if "input_tokens" in config or "output_tokens" in config:
            base.pop("trace", None)
        if "request_rate_per_s" in config:
            base.pop("concurrency", None)
        if "concurrency" in config:
            base.pop("request_rate_per_s", None)
        base.update(config)
        config = base
        name = name or preset
    config.pop("description", None), config.pop("source", None)
    name = str(name or default_name)

    trace = config.pop("trace", None)
    if trace is not None:
        if "input_tokens" in config or "output_tokens" in config:
            raise InputError(source, "trace", "is given together with input_tokens/output_tokens",
                             "give a trace or the two length fields, not both")
        if not isinstance(trace, str):
            raise InputError(source, "trace", f"must be a file path, got {trace!r}", "write trace: requests.csv")
        path = Path(trace) if Path(trace).is_absolute() or base_dir is None else base_dir / trace
        inputs, outputs = read_trace(path)
        input_spec, output_spec = LengthSpec(samples=inputs), LengthSpec(samples=outputs)
    else:
        input_spec = _length(config.pop("input_tokens", None), "input_tokens", source)
        output_spec = _length(config.pop("output_tokens", None), "output_tokens", source)

    slo = config.pop("slo", None)
    if slo is not None:
        slo = _section(slo, "slo", _SLO_FIELDS, source, SLOSpec, required=("ttft_ms", "tpot_ms"))
    spec_section = config.pop("speculative", None)
    speculative = (_section(spec_section, "speculative", _SPEC_FIELDS, source, SpeculativeSpec)
                   if spec_section is not None else SpeculativeSpec())
    values: dict[str, Any] = {}
    for key, kind in (("prefix_cache_hit_rate", float), ("request_rate_per_s", float), ("concurrency", int),
                      ("max_model_len", int)):
        if key in config and config[key] is not None:
            values[key] = _number(config.pop(key), key, source, kind)
        else:
            config.pop(key, None)
    try:
        return WorkloadSpec(name=name, input_tokens=input_spec, output_tokens=output_spec, slo=slo,
                            speculative=speculative, source=source, **values)
    except ValueError as exc:
        message = str(exc)
        field_name = next((name for name in _FIXES if message.startswith(name)), "concurrency")
        field_name = "request_rate_per_s/concurrency" if field_name == "give request_rate_per_s" else field_name
        fix = _FIXES.get(field_name, _FIXES["give request_rate_per_s"])
        raise InputError(source, field_name, message, fix) from None


_FIXES = {
    "prefix_cache_hit_rate": "give the fraction of prompt tokens found in the prefix cache, e.g. 0.3",
    "request_rate_per_s": "give requests per second to the whole fleet, e.g. 10",
    "max_model_len": "raise max_model_len or shorten the prompts",
    "give request_rate_per_s": "keep request_rate_per_s (open loop) or concurrency (closed loop), remove the other",
    "concurrency": "give the requests in flight in the whole fleet, a whole number >= 1",
}


def _number(value: Any, field_name: str, source: str, kind: type) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(source, field_name, f"must be a number, got {value!r}", "write a finite number without quotes")
    if kind is int:
        if value != int(value):
            raise InputError(source, field_name, f"must be a whole number, got {value!r}", "give a whole number")
        return int(value)
    return float(value)


def _length(value: Any, field_name: str, source: str) -> LengthSpec:
    if value is None:
        raise InputError(source, field_name, "is required but missing",
                         f"write e.g. '{field_name}: 1000', '{field_name}: {{p50: 800, p99: 4000}}' or a trace: file")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = {"mean_tokens": _number(value, field_name, source, float)}
    elif isinstance(value, Mapping):
        values = {}
        for key, item in value.items():
            if key not in _LENGTH_FIELDS:
                hint = did_you_mean(str(key), _LENGTH_FIELDS)
                raise InputError(source, f"{field_name}.{key}", f"unknown field{hint}",
                                 "use mean, p50, p99 and max")
            values[_LENGTH_FIELDS[key]] = _number(item, f"{field_name}.{key}", source, float)
    else:
        raise InputError(source, field_name, f"must be a number of tokens or a mapping, got {value!r}",
                         f"write e.g. '{field_name}: 1000' or '{field_name}: {{p50: 800, p99: 4000}}'")
    try:
        return LengthSpec(**values)
    except ValueError as exc:
        raise InputError(source, field_name, str(exc), "give mean, or p50 and p99 (and optionally max)") from None


def _section(value: Any, name: str, allowed: set[str], source: str, cls: type, required: tuple[str, ...] = ()) -> Any:
    if not isinstance(value, Mapping):
        raise InputError(source, name, f"must be a mapping, got {value!r}",
                         f"write '{name}: {{...}}' with fields {', '.join(sorted(allowed))}")
    for key in value:
        if key not in allowed:
            raise InputError(source, f"{name}.{key}", f"unknown field{did_you_mean(str(key), allowed)}",
                             f"valid fields: {', '.join(sorted(allowed))}")
    for key in required:
        if key not in value:
            raise InputError(source, f"{name}.{key}", "is required but missing", "add it")
    values = {key: (None if item is None else _number(item, f"{name}.{key}", source,
                                                      int if key == "draft_tokens" else float))
              for key, item in value.items()}
    try:
        return cls(**values)
    except ValueError as exc:
        message = str(exc)
        field_name = next((key for key in sorted(allowed, key=len, reverse=True) if message.startswith(key)), "")
        raise InputError(source, f"{name}.{field_name}" if field_name else name, message, "fix the value") from None


def read_trace(path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(input lengths, output lengths) of a CSV (header with input_tokens,output_tokens) or JSONL trace
    (one ``{"input_tokens": .., "output_tokens": ..}`` object a line); a longer trace than
    :data:`MAX_TRACE_ROWS` keeps a fixed-seed subsample, so results are deterministic."""
    path = checked_path(path, "trace")
    text = _read_text(path)
    rows: list[tuple[Any, Any]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"line {number}", f"is not JSON ({exc.msg})",
                                 'write one {"input_tokens": N, "output_tokens": M} object a line') from None
            if not isinstance(item, dict) or "input_tokens" not in item or "output_tokens" not in item:
                raise InputError(path, f"line {number}", "needs input_tokens and output_tokens",
                                 'write one {"input_tokens": N, "output_tokens": M} object a line')
            rows.append((item["input_tokens"], item["output_tokens"]))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"input_tokens", "output_tokens"} <= set(reader.fieldnames):
            raise InputError(path, "header", f"must name input_tokens and output_tokens, got {reader.fieldnames}",
                             "start the CSV with the line 'input_tokens,output_tokens'")
        rows = [(row["input_tokens"], row["output_tokens"]) for row in reader]
    if not rows:
        raise InputError(path, "", "holds no requests", "add rows of input_tokens,output_tokens")
    values = np.empty((len(rows), 2))
    for number, row in enumerate(rows, start=2 if path.suffix.lower() not in (".jsonl", ".json") else 1):
        for column, item in enumerate(row):
            try:
                value = float(item)
            except (TypeError, ValueError):
                value = math.nan
            if not (1 <= value <= MAX_TOKENS) or value != int(value):
                name = ("input_tokens", "output_tokens")[column]
                raise InputError(path, f"row {number} {name}", f"must be a whole number of tokens >= 1, got {item!r}",
                                 "fix or remove the row")
            values[number - (2 if path.suffix.lower() not in (".jsonl", ".json") else 1), column] = value
    if len(values) > MAX_TRACE_ROWS:
        keep = np.sort(np.random.default_rng(0).choice(len(values), MAX_TRACE_ROWS, replace=False))
        values = values[keep]
    return tuple(values[:, 0].tolist()), tuple(values[:, 1].tolist())
