"""The largest value the tool accepts for every number a user gives, and the largest it believes.

Two limits per quantity, kept in one table (:data:`BOUNDS`) so they are reviewed together:

* ``maximum`` -- a hard bound. A value past it is refused with one line naming the bound and why it
  is there. Each is far beyond any hardware or model that exists (typically 100x or more), so no real
  input meets one. They are what keeps a search from running away -- the layout enumeration factors
  GPU counts, batch sizes and layer counts, so 10^12 GPUs or a 10^23-token sequence would hang it --
  and what keeps the cost model's integer arithmetic inside 64 bits and its floats finite.
* ``plausible`` -- the most any shipping part (or announced one, with headroom) has. A value past it
  is accepted with a warning that names the likely unit slip: a Gb/s line rate typed into a GB/s
  field is 8x too fast, bytes typed into a GiB field 10^9 times too much.

Every number must also be finite (NaN and infinity are refused: they turn into NaN step times and
pages of numpy warnings) and a number, not ``true``/``false`` (YAML's booleans are ints to Python,
so ``num_nodes: true`` would be one node).

Figures quoted in the ``why`` texts are from the vendors' datasheets as of 2025: H100/H200/B200/B300
and GB200/GB300 NVL72 (NVIDIA), MI300X/MI355X (AMD), ConnectX-8 (800 Gb/s), NVLink 5 (900 GB/s per
direction per GPU) and the announced NVLink 6 / Rubin (1.8 TB/s per direction, 22 TB/s HBM4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Bound:
    """The limits of one quantity (see the module docstring)."""

    maximum: float
    """Largest value accepted (inclusive)."""

    unit: str
    """Unit the value is in, as the field name says it (``GiB``, ``GB/s``, ``tokens``)."""

    why: str
    """Why the bound is where it is: the largest real value, and how far past it the bound lies."""

    plausible: float | None = None
    """Largest value accepted without a warning; None = no warning below the hard bound."""

    slips: tuple[tuple[str, float], ...] = field(default=())
    """Unit slips to suggest: (what the value may really be, factor to this field's unit). A slip is
    suggested when the converted value is plausible."""


# --- clusters -------------------------------------------------------------------------------------
MAX_GPUS_PER_NODE = 10_000
MAX_NODES = 1_000_000
MAX_GPUS = 10_000_000
MAX_SCALEUP_DOMAIN_GPUS = 100_000

# --- models ---------------------------------------------------------------------------------------
MAX_LAYERS = 10_000
MAX_WIDTH = 1_000_000
MAX_FFN_WIDTH = 10_000_000
MAX_VOCAB = 100_000_000
MAX_EXPERTS = 10_000_000
MAX_MODEL_PARAMETERS = 1e15

# --- training -------------------------------------------------------------------------------------
MAX_SEQ_LENGTH = 10_000_000
MAX_GLOBAL_BATCH_SEQUENCES = 1_000_000_000
MAX_GLOBAL_BATCH_TOKENS = 1e12
MAX_TRAIN_TOKENS = 1e16
MAX_CAPACITY_FACTOR = 100.0

_GBIT = ("Gb/s (gigabits)", 1 / 8)
_MIB = ("MiB", 1 / 1024)
_BYTES = ("bytes", 1 / 2**30)
_GFLOPS = ("GFLOP/s", 1 / 1000)
_NS = ("nanoseconds", 1 / 1000)

BOUNDS: dict[str, Bound] = {
    # GPU
    "gpu.memory_gib": Bound(1e5, "GiB", "the largest GPU memory is 288 GB (B300, MI355X)",
                            plausible=1536, slips=(_MIB, _BYTES)),
    "gpu.hbm_GBps": Bound(1e6, "GB/s", "the fastest HBM is 8,000 GB/s (B200), 22,000 announced (Rubin)",
                          plausible=24_000, slips=(_GBIT,)),
    "gpu.peak_tflops_bf16": Bound(1e6, "TFLOP/s", "the fastest dense BF16 is 2,500 TFLOP/s (GB300)",
                                  plausible=20_000, slips=(_GFLOPS,)),
    "gpu.peak_tflops_fp8": Bound(1e6, "TFLOP/s", "the fastest dense FP8 is 5,000 TFLOP/s (GB300)",
                                 plausible=40_000, slips=(_GFLOPS,)),
    "gpu.peak_tflops_fp4": Bound(1e6, "TFLOP/s", "the fastest dense FP4 is 15,000 TFLOP/s (GB300)",
                                 plausible=80_000, slips=(_GFLOPS,)),
    "gpu.host_link_GBps": Bound(1e5, "GB/s", "NVLink-C2C, the fastest host link, is 450 GB/s per direction",
                                plausible=1_000, slips=(_GBIT,)),
    "gpu.tdp_w": Bound(1e6, "W", "the hungriest GPU boards draw 1,400 W (GB300)", plausible=5_000,
                       slips=(("milliwatts", 1 / 1000),)),
    "gpu.num_sms": Bound(1e5, "SMs", "the largest GPUs have 148 SMs (B200) or 304 compute units (MI300X)"),
    # topology
    "topology.gpus_per_node": Bound(MAX_GPUS_PER_NODE, "GPUs", "servers hold 4-16 GPUs; a whole NVL576 rack is 576"),
    "topology.num_nodes": Bound(MAX_NODES, "nodes", "the largest clusters have about 10^5 GPUs in 10^4 nodes"),
    "topology.scaleup_domain_gpus": Bound(MAX_SCALEUP_DOMAIN_GPUS, "GPUs",
                                          "the largest scale-up domains are 576 GPUs (NVL576) or 9,216 TPUs"),
    "topology.scaleup_GBps": Bound(1e5, "GB/s", "NVLink 5 is 900 GB/s per direction per GPU, NVLink 6 1,800",
                                   plausible=2_000, slips=(_GBIT, ("GB/s both directions", 1 / 2))),
    "topology.nics_per_node": Bound(1e5, "NICs", "servers carry up to one or two NICs per GPU"),
    "topology.nic_gbps": Bound(8e4, "Gb/s", "the fastest NIC is 800 Gb/s (ConnectX-8)"),
    "topology.nic_GBps": Bound(1e4, "GB/s", "the fastest NIC is 800 Gb/s = 100 GB/s (ConnectX-8)",
                               plausible=100, slips=(_GBIT,)),
    "topology.scaleup_latency_us": Bound(1e6, "us", "collective steps take about 1-10 us", plausible=1_000,
                                         slips=(_NS,)),
    "topology.scaleout_latency_us": Bound(1e6, "us", "collective steps take about 2-30 us", plausible=1_000,
                                          slips=(_NS,)),
    "topology.scaleout_oversubscription": Bound(1e3, "", "fat trees are built 1:1 to about 4:1"),
    # economics
    "economics.price_per_gpu_hour_usd": Bound(1e6, "USD per GPU-hour", "cloud list prices are $1-$15 per GPU-hour",
                                              plausible=200, slips=(("USD per GPU-month", 1 / 730),)),
    "economics.power_per_gpu_w": Bound(1e6, "W", "all-in power is 1-3 kW per GPU (GB300 NVL72: ~1.9 kW)",
                                       plausible=10_000, slips=(("milliwatts", 1 / 1000),)),
    "economics.pue": Bound(10, "", "data centres run at a PUE of 1.05-2"),
    # models (Hugging Face config.json names)
    "num_hidden_layers": Bound(MAX_LAYERS, "layers", "the deepest LLMs trained have ~100-200 layers"),
    "hidden_size": Bound(MAX_WIDTH, "", "the widest LLMs have hidden_size ~25,000"),
    "num_attention_heads": Bound(MAX_WIDTH, "heads", "LLMs have up to ~256 attention heads"),
    "num_key_value_heads": Bound(MAX_WIDTH, "heads", "LLMs have up to ~256 attention heads"),
    "head_dim": Bound(MAX_WIDTH, "", "attention heads are 64-256 wide"),
    "intermediate_size": Bound(MAX_FFN_WIDTH, "", "the widest MLPs are ~100,000"),
    "moe_intermediate_size": Bound(MAX_FFN_WIDTH, "", "the widest MLPs are ~100,000"),
    "shared_expert_intermediate_size": Bound(MAX_FFN_WIDTH, "", "the widest MLPs are ~100,000"),
    "vocab_size": Bound(MAX_VOCAB, "tokens", "the largest vocabularies are ~262,000 tokens (Gemma 3)"),
    "num_experts": Bound(MAX_EXPERTS, "experts", "MoE LLMs have up to 384 experts (Kimi K2); PEER ~10^6"),
    "num_local_experts": Bound(MAX_EXPERTS, "experts", "MoE LLMs have up to 384 experts (Kimi K2); PEER ~10^6"),
    "n_routed_experts": Bound(MAX_EXPERTS, "experts", "MoE LLMs have up to 384 experts (Kimi K2); PEER ~10^6"),
    "max_position_embeddings": Bound(1e9, "positions", "contexts reach ~10^7 tokens"),
    "kv_lora_rank": Bound(MAX_WIDTH, "", "MLA ranks are 512-1,536 (DeepSeek-V3)"),
    "q_lora_rank": Bound(MAX_WIDTH, "", "MLA ranks are 512-1,536 (DeepSeek-V3)"),
    "qk_nope_head_dim": Bound(MAX_WIDTH, "", "attention heads are 64-256 wide"),
    "qk_rope_head_dim": Bound(MAX_WIDTH, "", "attention heads are 64-256 wide"),
    "v_head_dim": Bound(MAX_WIDTH, "", "attention heads are 64-256 wide"),
    "num_nextn_predict_layers": Bound(MAX_LAYERS, "layers", "DeepSeek-V3 predicts 1 extra token"),
    "sliding_window": Bound(1e12, "tokens", "windows are 128-131,072 tokens"),
    # training
    "seq_length": Bound(MAX_SEQ_LENGTH, "tokens", "the longest contexts trained are ~10^6 tokens"),
    "global_batch_size": Bound(MAX_GLOBAL_BATCH_SEQUENCES, "sequences",
                               "the largest runs take ~10^4-10^5 sequences per step"),
    "global_batch_tokens": Bound(MAX_GLOBAL_BATCH_TOKENS, "tokens",
                                 "the largest runs take ~6x10^7 tokens per step (DeepSeek-V3)"),
    "train_tokens": Bound(MAX_TRAIN_TOKENS, "tokens", "the largest runs train on ~4x10^13 tokens (Qwen3)"),
    "moe_capacity_factor": Bound(MAX_CAPACITY_FACTOR, "", "runs use 1.0-2.0"),
    "moe_rank_capacity_factor": Bound(MAX_CAPACITY_FACTOR, "", "runs use 1.0-2.0"),
    "moe_paged_stash_factor": Bound(MAX_CAPACITY_FACTOR, "", "Megatron's default is 1.10"),
}
"""Every bounded quantity, by its dotted field name (cluster) or its file name (model, training)."""


class OutOfBounds(ValueError):
    """A value a bound refuses: ``field`` (the key in :data:`BOUNDS`, or the field name), ``problem`` and
    ``fix``, ready for :class:`~hardware.errors.InputError`. A ValueError, so code that builds specs
    directly sees the error type it always did."""

    def __init__(self, field: str, problem: str, fix: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem, self.fix = field, problem, fix


def shown(value: Any) -> str:
    """A value as the user wrote it in YAML: true/false for booleans, quotes around strings."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def fmt(value: float) -> str:
    """A number as a person writes it: 1,024 / 2.5 / 79.65, and 1e+23 past 15 digits."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{float(value):.4g}"


def check_number(key: str, value: Any, *, integer: bool = False, minimum: float | None = None,
                 above_minimum: bool = False, name: str | None = None) -> int | float:
    """``value`` as a finite number within ``[minimum, BOUNDS[key].maximum]``, else :class:`OutOfBounds`.

    ``integer`` refuses fractions (and returns an int); ``above_minimum`` makes the minimum exclusive.
    Booleans are refused even though Python counts them as ints. ``name`` is the field as the user
    wrote it, when it is not ``key``.
    """
    name = name or key
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutOfBounds(name, f"must be {kind}, got {shown(value)}",
                          "write the number without quotes" if isinstance(value, str) else f"write {kind}")
    if not math.isfinite(value):
        raise OutOfBounds(name, f"must be a finite number, got {value!r}", "give a finite value")
    if integer and value != int(value):
        raise OutOfBounds(name, f"must be a whole number, got {value!r}", "give a whole number")
    if minimum is not None and (value <= minimum if above_minimum else value < minimum):
        relation = "greater than" if above_minimum else "at least"
        raise OutOfBounds(name, f"must be {relation} {fmt(minimum)}, got {fmt(value)}", "fix the value")
    check_bound(key, value, name=name)
    return int(value) if integer else value


def check_bound(key: str, value: float, *, name: str | None = None) -> None:
    """Refuse ``value`` past the hard bound of ``key`` (no bound known: nothing to check)."""
    bound = BOUNDS.get(key)
    if bound is None or value <= bound.maximum:
        return
    unit = f" {bound.unit}" if bound.unit else ""
    raise OutOfBounds(name or key, f"{fmt(value)}{unit} is past the bound of {fmt(bound.maximum)}{unit} that "
                      f"plan-search accepts, far beyond any real value ({bound.why})",
                      _slip_hint(bound, value) or "check the value and its unit")


def plausibility_warning(key: str, value: float) -> str | None:
    """A warning for a value past what any real part has (within the hard bound), else None."""
    bound = BOUNDS.get(key)
    if bound is None or bound.plausible is None or not value > bound.plausible:
        return None
    unit = f" {bound.unit}" if bound.unit else ""
    hint = _slip_hint(bound, value, key)
    return (f"{key} = {fmt(value)}{unit} is past anything real ({bound.why})"
            + (f"; {hint}" if hint else "; check the value and its unit"))


def _slip_hint(bound: Bound, value: float, key: str = "") -> str:
    """'if it is in MiB, write 79.65' for each unit slip that turns the value into a plausible one: at
    most the plausible limit, and not a thousand times below it (bytes read as GiB would be 10^-5 GiB)."""
    limit = bound.plausible if bound.plausible is not None else bound.maximum
    hints = []
    for unit, factor in bound.slips:
        converted = value * factor
        if limit / 1000 <= converted <= limit:
            if key == "topology.nic_GBps" and unit == _GBIT[0]:
                hints.append(f"if {fmt(value)} is the Gb/s line rate, write nic_gbps: {fmt(value)} "
                             f"(= {fmt(converted)} GB/s)")
            else:
                hints.append(f"if it is in {unit}, write {fmt(converted)}")
    return "; ".join(hints)
