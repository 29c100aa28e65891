"""The public table ``data/serving_runs.csv`` as serving runs the serving cost model prices.

``serving_runs.csv`` (1,750 rows, README ``data/serving_runs.md``) was collected by others from the
TensorRT-LLM performance pages, MLPerf Inference v4.1 logs and the Splitwise (ISCA'24) profile. This
module turns each row into a :class:`ServingRun`: a model preset, a GPU preset and GPU count, the
instance layout that was run (the columns of :class:`cost_model.serving.plan.InstanceArrays`), the
workload (ISL/OSL, a static batch or an arrival rate) and what was measured, through explicit tables
below, one entry per distinct text of the CSV, each saying why. Four kinds of run:

* ``max_load``: total output tokens/s at max load (TensorRT-LLM ``trtllm-bench throughput``, MLPerf
  Offline), compared per GPU. The TensorRT-LLM pages' command passes no batch or token limit, so
  ``trtllm-bench`` derived them itself (:mod:`cost_model.calibration.trtllm_bench`, from the dataset's
  request count, :data:`TRTLLM_BENCH_NUM_REQUESTS`); what the sources leave open besides (on the v1.0
  page the expert-parallel degree of MoE runs, and not everywhere the KV dtype; MLPerf's batch and chunk
  budgets, :data:`UNPUBLISHED_MAX_LOAD_CHOICES`) is a set of candidates and the calibration keeps the
  fastest one predicted to fit, as ``validate`` does with unpublished training memory settings (the
  README: "compare with the best unconstrained plan at the printed layout").
* ``static_batch``: Splitwise's profile, ``batch`` identical requests run together: the prompt time
  (TTFT of the batch: one prefill step over batch x ISL tokens) and the time per output token (one
  decode step at that batch).
* ``mlperf_server``: MLPerf Server, Poisson arrivals at a rate, TTFT/TPOT percentiles and throughput.

Repeats of one configuration (``config_key``) collapse to one run with the median of each measured
quantity. What cannot be priced honestly is returned as a :class:`SkippedRun` with its reason (a GPU
without a preset, a power cap the cost model cannot express, a layout or precision the source does
not print, rows the README calls suspect), never guessed.
"""

from __future__ import annotations

import csv
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hardware.errors import InputError

DEFAULT_CSV = Path(__file__).resolve().parent / "data" / "serving_runs.csv"

KINDS = ("max_load", "static_batch", "mlperf_server")

QUANTITIES = ("output_tokens_per_s_per_gpu", "ttft_ms", "tpot_ms", "ttft_ms_p50", "ttft_ms_p99",
              "tpot_ms_p50", "tpot_ms_p99")
"""Measured quantities a run can carry (``ttft_ms`` / ``tpot_ms``: Splitwise's prompt time and per-token
time of one static batch; the percentiles: MLPerf Server's LoadGen statistics)."""


@dataclass(frozen=True)
class SkippedRun:
    """A CSV row that is not priced, and why (one line, naming the column)."""

    id: str
    source_group: str
    reason: str


@dataclass(frozen=True)
class ServingRun:
    """One published serving configuration (repeats collapsed), ready to price."""

    id: str
    """The CSV's ``config_key``."""
    source_group: str
    run_ids: tuple[str, ...]
    """The CSV rows (repeats) this run collapses."""
    kind: str
    """One of :data:`KINDS`."""
    model: str
    """Preset in ``cost_model/presets/models.yaml``."""
    gpu: str
    """Hardware preset in ``hardware/presets``."""
    num_gpus: int
    layout: dict[str, int]
    """Published instance degrees: tp, pp, ep, attn_dp, moe_tp (``ep`` 0 = not published, MoE only)."""
    weight_precision: str
    kv_dtypes: tuple[str, ...]
    """KV dtypes to price: one when published, both (bf16, fp8) when not."""
    replicas: int
    isl: float | None
    osl: float | None
    batch: int | None = None
    """Static batch (Splitwise): requests run together."""
    request_rate_per_s: float | None = None
    workload: str | None = None
    """A workload preset for dataset-driven rows (MLPerf's OpenOrca), priced with its length distribution."""
    cuda_graphs: bool = True
    overlap_scheduler: bool = False
    """The engine prepares the next step on the CPU while the GPU runs this one
    (:attr:`cost_model.serving.options.ServingOptions.overlap_scheduler`)."""
    kv_reserved_to_completion: bool = False
    """The engine reserves each request's KV to completion before admitting it
    (:attr:`cost_model.serving.options.ServingOptions.kv_reserved_to_completion`)."""
    measured: dict[str, float] = field(default_factory=dict)
    """Median over the repeats of each quantity of :data:`QUANTITIES` the source publishes."""
    is_moe: bool = False
    trtllm_bench: bool = False
    """The engine's max_batch_size / max_num_tokens are what ``trtllm-bench throughput`` derived for itself
    (:mod:`cost_model.calibration.trtllm_bench`), not a grid of unpublished candidates."""
    num_requests: int | None = None
    """Requests of the run's dataset (the perf page's ``$num_requests`` table); None when not published."""
    assumptions: tuple[str, ...] = ()

    @property
    def gpus_per_instance(self) -> int:
        return self.layout["tp"] * self.layout["pp"] * self.layout["attn_dp"]

    @property
    def layout_text(self) -> str:
        lay = self.layout
        text = f"TP{lay['tp']}" + (f" PP{lay['pp']}" if lay["pp"] > 1 else "")
        if lay["attn_dp"] > 1:
            text = f"DEP{lay['attn_dp']}" + (f" PP{lay['pp']}" if lay["pp"] > 1 else "")
        elif lay["ep"] > 1:
            text += f" EP{lay['ep']}"
        return text + (f" x{self.replicas}" if self.replicas > 1 else "")


class _Skip(Exception):
    """Raised inside the conversion of one row: the row is returned as a SkippedRun."""


# --------------------------------------------------------------------------------------------------
# Mapping tables. Keys are the CSV's exact texts; a text not in a table stops that row with a reason.
# --------------------------------------------------------------------------------------------------

MODEL_PRESETS: dict[str, tuple[str, str]] = {
    # model_hf_id: (preset, why). Same architecture = same config.json apart from fields plan-search does not
    # price (rope_scaling, max_position_embeddings, chat tuning).
    "meta-llama/Llama-2-70b-chat-hf": ("llama2-70b", "Llama-2-70b-chat-hf has Llama-2-70b-hf's config.json"),
    "bigscience/bloom": ("bloom-176b", "bigscience/bloom config.json"),
    "meta-llama/Llama-3.3-70B-Instruct": ("llama3-70b", "Llama 3.3 70B = Llama 3 70B's architecture (config.json: "
                                          "80 x 8192, 64/8 heads, 28672, vocab 128256; only rope_scaling differs)"),
    "meta-llama/Llama-3.1-8B-Instruct": ("llama3-8b", "Llama 3.1 8B = Llama 3 8B's architecture (rope_scaling aside)"),
    "meta-llama/Llama-3.1-405B-Instruct": ("llama3-405b", "config.json of Llama-3.1-405B"),
    "Qwen/Qwen3-30B-A3B": ("qwen3-30b-a3b", "config.json of Qwen3-30B-A3B"),
    "Qwen/Qwen3-235B-A22B": ("qwen3-235b-a22b", "config.json of Qwen3-235B-A22B"),
    "meta-llama/Llama-4-Scout-17B-16E-Instruct": ("llama4-scout", "text_config of Llama-4-Scout-17B-16E"),
    "meta-llama/Llama-4-Maverick-17B-128E-Instruct": ("llama4-maverick", "text_config of Llama-4-Maverick-17B-128E-Instruct"),
    "openai/gpt-oss-120b": ("gpt-oss-120b", "config.json of gpt-oss-120b"),
    "openai/gpt-oss-20b": ("gpt-oss-20b", "config.json of gpt-oss-20b"),
    "deepseek-ai/DeepSeek-R1-0528": ("deepseek-v3", "DeepSeek-R1(-0528) is DeepSeek-V3's architecture (same config.json "
                                     "shape: 61 layers, MLA, 256 experts top-8, one MTP layer)"),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": ("mixtral-8x7b", "Mixtral-8x7B-Instruct has Mixtral-8x7B's config.json"),
}

GPU_TYPES: dict[str, tuple[str, str]] = {
    # gpu_type: (hardware preset, why)
    "A100 SXM 80GB (DGX-A100)": ("a100-sxm-80gb", "DGX A100 80GB"),
    "H100 SXM 80GB (DGX-H100)": ("h100-sxm", "DGX H100"),
    "H100 SXM 80GB": ("h100-sxm", "H100 SXM 80GB (MLPerf DGX-H100, TensorRT-LLM's H100 columns)"),
    "H200 SXM 141GB": ("h200-sxm", "H200 SXM 141GB"),
    "B200 180GB": ("b200", "B200 (HGX/DGX, 1,000 W)"),
    "GB200 192GB (NVL72)": ("gb200-nvl72", "GB200 NVL72"),
    "MI300X 192GB": ("mi300x", "AMD MI300X"),
}
UNPRICED_GPUS = {
    "RTX PRO 6000 Blackwell Server": "gpu_type RTX PRO 6000 Blackwell Server has no hardware preset (96 GB GDDR7, "
                                     "PCIe-only scale-up: no NVLink domain the hardware schema could describe as given)",
    "H100 SXM 80GB (DGX-H100), power-capped": "gpu_type power-capped H100: the cap is not in the row and the cost "
                                              "model has no clock-versus-power curve to slow the GPU by",
}

PRECISIONS = {"fp8": "fp8", "fp4": "fp4"}
"""weight_precision texts; blank is read per source (:func:`_precision`)."""

SERVED_AS_STORED: dict[str, tuple[str, str]] = {
    # model_hf_id: (weight precision, why). Checkpoints whose own quantized format is what every column ran.
    "openai/gpt-oss-120b": ("fp4", "GPT-OSS runs its released MXFP4 checkpoint on every GPU: the perf page's FP8 "
                            "and FP4 model lists (NVIDIA/TensorRT-LLM docs/source/developer-guide/perf-overview.md "
                            "@03e27c7d, 'FP4 Models' / 'FP8 Models') do not name it, and its GPT-OSS llm_options "
                            "run the MoE on the TRITON backend on Hopper ('moe_config: backend: CUTLASS  # Hopper: "
                            "use TRITON'), Triton's MXFP4 kernels with BF16 activations; the column's '(FP8)' "
                            "labels the GPU's table, not a GPT-OSS FP8 checkpoint"),
    "openai/gpt-oss-20b": ("fp4", "as openai/gpt-oss-120b"),
}
"""Rows whose ``weight_precision`` text is replaced by the checkpoint's stored format, and why."""

KV_DTYPES: dict[str, str | None] = {
    # kv_cache_dtype text: KV dtype, or None = depends on the GPU (below)
    "fp8": "fp8",
    "fp8 (Blackwell); auto (Hopper)": None,
}

UNPUBLISHED_MAX_LOAD_CHOICES: dict[str, tuple[int, ...]] = {
    # Engine knobs the MLPerf harness tunes per run and does not print: every combination is a candidate; the
    # fastest predicted to fit is compared (the tables are max-throughput tables). The TensorRT-LLM pages' runs
    # take trtllm-bench's own derivation instead (TRTLLM_BENCH_SOURCES).
    "max_num_seqs": (32, 64, 128, 256, 512, 1024, 2048),
    "max_num_batched_tokens": (2048, 8192, 16384),
}
"""``max_num_seqs`` per attention rank from 32 (trtllm-bench's smallest tuned batch on the 20k/2k rows) to
2048 (its max_batch_size default); chunk budgets from 2048 to TensorRT-LLM's 16384 max_num_tokens ceiling."""

TRTLLM_BENCH_SOURCES = ("trtllm_v10", "trtllm_new")
"""Source groups run with ``trtllm-bench throughput`` and neither ``--max_batch_size`` nor ``--max_num_tokens``
(both perf pages' 'Running the Benchmark' commands): the engine limits are trtllm-bench's own
(:mod:`cost_model.calibration.trtllm_bench`)."""

TRTLLM_BENCH_NUM_REQUESTS: dict[str, dict[tuple[int, int], int]] = {
    # source_group: {(ISL, OSL): $num_requests}, the pages' 'Preparing a Dataset' tables.
    # NVIDIA/TensorRT-LLM docs/source/performance/perf-overview.md @00f37686aa854010d68bcbd0f4ab000221541ca6
    "trtllm_v10": {(128, 128): 30000, (128, 2048): 3000, (128, 4096): 1500, (1000, 2000): 1500, (2048, 128): 3000,
                   (2048, 2048): 1500, (5000, 500): 1500, (1000, 1000): 3000, (500, 2000): 3000,
                   (20000, 2000): 1000},
    # docs/source/developer-guide/perf-overview.md @03e27c7d5ff0c6e89f8328838c0a8e64f1b34f9d. Its results also
    # have 1000/1000 rows, which its table does not list; the same procedure's table on the v1.0 page (above)
    # gives 1000/1000 3000 requests, as this table gives its 1024/1024: read as 3000.
    "trtllm_new": {(1024, 1024): 3000, (8192, 1024): 1500, (1024, 8192): 1500, (32768, 1024): 1000,
                   (1024, 32768): 1000, (1000, 1000): 3000},
}
"""Requests of each perf-page dataset: with attention DP a rank runs no more than its share of them."""

V10_MOE_ATTENTION_DP = (
    "attention DP on (the v1.0 page prints 'TP<n>' for MoE runs; its MoE llm_options.yml enables "
    "enable_attention_dp, printed indented under cuda_graph_config, where CudaGraphConfig, a StrictBaseModel "
    "with extra='forbid' in tensorrt_llm/llmapi/llm_args.py, would have refused it: the page's author placed it "
    "at the top level in the review of NVIDIA/TensorRT-LLM PR #7848, 'Update Perf-Overview.md for release/1.0', "
    "reviewer: 'enable_attention_dp should be at the same indent as the cuda_graph_config', author: 'should be "
    "fixed now'): TP<n> read as DEP<n>, n attention ranks of TP1")
"""Why the v1.0 page's multi-GPU MoE columns are priced with attention data parallelism. The page's commit
(@00f37686) still prints the key under ``cuda_graph_config``; read literally the run would not have started
(``CudaGraphConfig(StrictBaseModel)``, ``class Config: extra = "forbid"``), so the yaml is not what ran, and
the author's review reply says what did. The measurements agree: the v1.0 'TP<n>' MoE columns give per GPU what
the newer page's explicit DEP columns give (Qwen3-235B-A22B 1000/1000 tokens/s/GPU: B200 'TP8' 5,299 vs 'DEP4'
5,764, H100 'TP8' 1,862 vs 'DEP8' 1,932, H200 'TP8' 2,974 vs 'DEP4' 3,288; Llama 4 Maverick H200 'TP8' 3,973
vs 'DEP8' 4,146)."""

SUSPECT = "Splitwise TP2 batch-64 Llama 2 70B 512/128 rows look capped (TTFT far below batch 32): the README " \
          "calls them suspect"


def _int(text: str) -> int | None:
    text = text.strip()
    return int(float(text)) if text else None


def _float(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


def _model(row: dict[str, str]) -> str:
    entry = MODEL_PRESETS.get(row["model_hf_id"])
    if entry is None:
        raise _Skip(f"model_hf_id {row['model_hf_id']!r} has no preset")
    return entry[0]


def _gpu(row: dict[str, str]) -> str:
    text = row["gpu_type"]
    if text in UNPRICED_GPUS:
        raise _Skip(UNPRICED_GPUS[text])
    if text not in GPU_TYPES:
        raise _Skip(f"gpu_type {text!r} is not in the table")
    return GPU_TYPES[text][0]


def _precision(row: dict[str, str], assumptions: list[str]) -> str:
    text = row["weight_precision"].strip()
    stored = SERVED_AS_STORED.get(row["model_hf_id"])
    if stored is not None:
        if text != stored[0]:
            assumptions.append(f"weight_precision {text!r} read as {stored[0]!r}: the checkpoint's own MXFP4 "
                               "(SERVED_AS_STORED)")
        return stored[0]
    if text in PRECISIONS:
        return PRECISIONS[text]
    if not text and row["source_group"] == "splitwise_profile":
        assumptions.append("16-bit weights and KV (the profile does not say; FP8 does not exist on A100 and the "
                           "TP2 A100 rows fit only in 16 bits)")
        return "bf16"
    raise _Skip("weight_precision not published (MLPerf prints no precision for this system)")


def _kv_dtypes(row: dict[str, str], gpu: str, precision: str, assumptions: list[str]) -> tuple[str, ...]:
    text = row["kv_cache_dtype"].strip()
    if text in KV_DTYPES:
        dtype = KV_DTYPES[text]
        if dtype is None:  # "fp8 (Blackwell); auto (Hopper)": auto = the checkpoint's 16-bit KV
            dtype = "fp8" if gpu.startswith(("b", "gb")) else "bf16"
        return (dtype,)
    if text:
        raise _Skip(f"kv_cache_dtype {text!r} is not in the table")
    if precision == "bf16":
        return ("bf16",)
    assumptions.append("KV dtype not published: bf16 and fp8 priced, the faster that fits kept")
    return ("bf16", "fp8")


def _layout(row: dict[str, str], moe: bool, assumptions: list[str]) -> dict[str, int]:
    tp = _int(row["tp"])
    if tp is None:
        raise _Skip("tp not published (layout of this MLPerf system not printed)")
    pp = _int(row["pp"]) or 1
    attn_dp = _int(row["attn_dp"]) or 1
    if row["source_group"] == "trtllm_v10" and moe and tp > 1 and attn_dp == 1:
        tp, attn_dp = 1, tp
        assumptions.append(V10_MOE_ATTENTION_DP)
    ep = _int(row["ep"])
    if ep is None:
        if moe and tp * attn_dp > 1:
            ep = 0  # not published: the calibration prices EP 1 and EP = TP (moe_tp 1)
            assumptions.append("EP not published (the v1.0 table prints only TP): EP 1 and EP = TP priced, the "
                               "faster that fits kept")
        else:
            ep = 1
    moe_tp = _int(row["moe_tp"])
    if moe_tp is None:
        moe_tp = (tp * attn_dp) // ep if ep else 0
    return {"tp": tp, "pp": pp, "ep": ep, "attn_dp": attn_dp, "moe_tp": moe_tp}


def _kind(row: dict[str, str]) -> str:
    scenario = row["scenario"]
    if scenario.startswith("static batch"):
        return "static_batch"
    if scenario.startswith("offline max throughput") or scenario == "MLPerf Offline":
        return "max_load"
    if scenario.startswith("MLPerf Server"):
        return "mlperf_server"
    raise _Skip(f"scenario {scenario!r} is not in the table")


MLPERF_WORKLOADS = {
    # (dataset, kind): workload preset in cost_model/presets/workloads.yaml (its length distribution)
    ("OpenOrca (MLPerf llama2-70b)", "max_load"): "mlperf-llama2-70b-offline",
    ("OpenOrca (MLPerf llama2-70b)", "mlperf_server"): "mlperf-llama2-70b-server",
}
"""MLPerf rows: (dataset, kind) -> the workload preset whose length distribution prices the row."""


def _measured(row: dict[str, str], kind: str) -> dict[str, float]:
    if kind == "static_batch":
        return {k: v for k, v in (("ttft_ms", _float(row["ttft_ms_mean"])), ("tpot_ms", _float(row["tpot_ms_mean"])))
                if v is not None}
    out = {"output_tokens_per_s_per_gpu": _float(row["output_tokens_per_s_per_gpu"])}
    if kind == "mlperf_server":
        for key in ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99"):
            out[key] = _float(row[key])
    return {k: v for k, v in out.items() if v is not None}


def convert_row(row: dict[str, str], layouts_of: dict[tuple, dict[str, int]] | None = None
                ) -> dict[str, Any]:
    """One CSV row as the fields of a :class:`ServingRun` (without the collapse of repeats); raises
    :class:`_Skip` with the reason when it cannot be priced."""
    assumptions: list[str] = []
    kind = _kind(row)
    model = _model(row)
    gpu = _gpu(row)
    moe = row["model_type"].strip() == "moe"
    workload = None
    if row["source_group"] == "mlperf_v41":
        workload = MLPERF_WORKLOADS.get((row["dataset"], kind))
        if workload is None:
            raise _Skip(f"dataset {row['dataset']!r} has no workload preset (its length distribution is not modelled)")
        if kind == "max_load" and not row["tp"].strip() and layouts_of is not None:
            # MLPerf Offline prints no layout; the same system's Server run of the same benchmark does, and
            # NVIDIA's harness builds one engine per system and benchmark for both scenarios.
            twin = layouts_of.get((row["gpu_type"], row["num_gpus"], row["other_metrics"]))
            if twin is not None:
                row = {**row, **twin}
                assumptions.append("layout and precision of the same system's MLPerf Server run (one engine per "
                                   "system and benchmark in NVIDIA's harness)")
    precision = _precision(row, assumptions)
    layout = _layout(row, moe, assumptions)
    num_gpus = _int(row["num_gpus"])
    replicas = _int(row["replicas"]) or 1
    per_instance = layout["tp"] * layout["pp"] * layout["attn_dp"]
    if per_instance * replicas != num_gpus:
        raise _Skip(f"tp x pp x attn_dp x replicas = {per_instance * replicas} is not num_gpus {num_gpus}")
    batch = _int(row["max_batch_size"]) if kind == "static_batch" else None
    if (kind == "static_batch" and batch == 64 and layout["tp"] == 2 and model == "llama2-70b"
            and row["isl"] == "512" and row["osl"] == "128"):
        raise _Skip(SUSPECT)
    cuda_graphs = True
    # TensorRT-LLM's PyTorch backend overlaps the scheduler with the GPU by default ("Overlap Scheduler",
    # nvidia.github.io/TensorRT-LLM: "Enabled by default"); the perf-overview rows say "PyTorch backend" and
    # do not disable it (other_settings).
    overlap_scheduler = row["other_settings"].startswith("PyTorch backend")
    if overlap_scheduler:
        assumptions.append("overlap scheduler on (TensorRT-LLM PyTorch backend default)")
    # Its default capacity scheduler, GUARANTEED_NO_EVICT, which the perf pages' llm_options do not change.
    kv_reserved = overlap_scheduler
    if kv_reserved:
        assumptions.append("KV reserved to completion (TensorRT-LLM GUARANTEED_NO_EVICT capacity scheduler default)")
    trtllm_bench = row["source_group"] in TRTLLM_BENCH_SOURCES and kind == "max_load"
    num_requests = None
    if trtllm_bench:
        lengths = (_int(row["isl"]), _int(row["osl"]))
        num_requests = TRTLLM_BENCH_NUM_REQUESTS[row["source_group"]].get(lengths)
        assumptions.append("engine limits derived by trtllm-bench (no --max_batch_size / --max_num_tokens; "
                           "chunked prefill off)" + ("" if num_requests else "; dataset request count not published"))
        if row["source_group"] == "trtllm_new" and lengths == (1000, 1000):
            assumptions.append("3000 requests: the page's dataset table omits 1000/1000; the v1.0 page's table of "
                               "the same procedure gives 3000")
    if row["source_group"] == "splitwise_profile":
        cuda_graphs = False
        assumptions.append("eager decode steps (the profile names no framework; 2023 serving stacks ran decode "
                           "without CUDA graphs)")
    return dict(id=row["config_key"], source_group=row["source_group"], kind=kind, model=model, gpu=gpu,
                num_gpus=num_gpus, layout=layout, weight_precision=precision,
                kv_dtypes=_kv_dtypes(row, gpu, precision, assumptions), replicas=replicas,
                isl=_float(row["isl"]), osl=_float(row["osl"]), batch=batch,
                request_rate_per_s=_float(row["request_rate_per_s"]), workload=workload, cuda_graphs=cuda_graphs,
                overlap_scheduler=overlap_scheduler, kv_reserved_to_completion=kv_reserved,
                measured=_measured(row, kind), is_moe=moe, trtllm_bench=trtllm_bench, num_requests=num_requests,
                assumptions=tuple(assumptions))


def read_csv(path: str | Path = DEFAULT_CSV) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "", "does not exist", "give the serving_runs.csv path")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"run_id", "source_group", "config_key", "model_hf_id", "gpu_type", "scenario"} - set(rows[0] if rows else {})
    if missing:
        raise InputError(str(path), sorted(missing)[0], "column is missing", "use the serving_runs.csv schema")
    return rows


def load_serving_runs(path: str | Path = DEFAULT_CSV) -> tuple[list[ServingRun], list[SkippedRun]]:
    """Every row of the table as a priced run (repeats collapsed by ``config_key``) or a skipped one."""
    rows = read_csv(path)
    layouts_of = {(r["gpu_type"], r["num_gpus"], r["other_metrics"]):
                  {k: r[k] for k in ("tp", "pp", "ep", "attn_dp", "moe_tp", "replicas", "weight_precision")}
                  for r in rows if r["scenario"].startswith("MLPerf Server") and r["tp"].strip()}
    converted: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    skipped: list[SkippedRun] = []
    for row in rows:
        try:
            fields_ = convert_row(row, layouts_of)
        except _Skip as reason:
            skipped.append(SkippedRun(id=row["run_id"], source_group=row["source_group"], reason=str(reason)))
            continue
        converted.setdefault(fields_["id"], []).append((row["run_id"], fields_))
    runs = []
    for key, members in converted.items():
        first = members[0][1]
        quantities = sorted({q for _, f in members for q in f["measured"]})
        measured = {q: float(statistics.median([f["measured"][q] for _, f in members if q in f["measured"]]))
                    for q in quantities}
        runs.append(ServingRun(**{**first, "measured": measured, "run_ids": tuple(run_id for run_id, _ in members)}))
    return runs, skipped


def skip_counts(skipped: list[SkippedRun]) -> dict[str, int]:
    """CSV rows not priced, by reason (most first)."""
    return dict(Counter(s.reason for s in skipped).most_common())


def main() -> None:
    """``python -m cost_model.calibration.serving_runs``: runs by source and kind, skipped rows by reason."""
    runs, skipped = load_serving_runs()
    print(f"{sum(len(r.run_ids) for r in runs)} CSV rows -> {len(runs)} runs (repeats collapsed); "
          f"{len(skipped)} rows skipped")
    for (group, kind), count in sorted(Counter((r.source_group, r.kind) for r in runs).items()):
        print(f"  {group:18s} {kind:14s} {count:4d} runs")
    for reason, count in skip_counts(skipped).items():
        print(f"  skipped {count:4d}: {reason}")


if __name__ == "__main__":
    main()
