"""torchtitan 0.3.0 loads every emitted launch of the plan grid and runs the plan that was priced.

Each case's ``argv`` goes through torchtitan's own ``ConfigManager.parse_args`` (``--module``/``--config``
and tyro overrides; ``Trainer.Config.__post_init__`` checks the pipeline micro-batch and CUDA graphs),
then the start-up checks of ``Trainer.__init__`` that need no GPU: ``ParallelDims`` for the world size,
the model config's ``update_from_config`` (TP divides the heads and KV heads, RoPE length, EP
dispatcher), the sequence divisor, the batch arithmetic, the pipeline split (``_get_pipeline_metadata`` and
``_generate_llm_fqn_per_model_part``), the pipeline schedule class and its micro-batch rules, and
``full_dtensor.validate_config`` on the model built on the meta device. The loaded config is then
compared with the priced plan.

Run: ``/tmp/confvenv/bin/python -m pytest tests/conformance/test_torchtitan.py``.
Refresh the checked-in key list (``tests/conformance/data/torchtitan_0.3.0_keys.json``, used by the CI
test without torchtitan): ``/tmp/confvenv/bin/python -m tests.conformance.test_torchtitan --refresh``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path

import pytest

from cost_model.model_loader import build_training, load_model
from cost_model.plan import PlanArrays
from optimizer.emit import torchtitan as tt_emit
from tests.conformance.plan_grid import ConformanceCase, conformance_cases

KEYS_FILE = Path(__file__).parent / "data" / "torchtitan_0.3.0_keys.json"


def _sections() -> dict[str, list[str]]:
    """``section.field`` names torchtitan's command line takes, from ``Trainer.Config``'s dataclasses."""
    from torchtitan.trainer import Trainer

    config = Trainer.Config()
    keys: dict[str, list[str]] = {}
    for section in dataclasses.fields(config):
        value = getattr(config, section.name)
        if dataclasses.is_dataclass(value) and section.name != "activation_checkpoint":
            keys[section.name] = sorted(f.name for f in dataclasses.fields(value))
    return keys


def _subcommands() -> list[str]:
    from torchtitan.distributed.activation_checkpoint import ActivationCheckpointingConfig

    names = []
    for option in typing.get_args(ActivationCheckpointingConfig):
        for meta in getattr(option, "__metadata__", ()):
            if getattr(meta, "name", None):
                names.append(f"activation_checkpoint:{meta.name}")
    return sorted(names)


def _config_functions() -> dict[str, list[str]]:
    import importlib

    modules = sorted({c.module for c in tt_emit.CONFIG_FUNCTIONS})
    return {m: sorted(name for name, fn in vars(importlib.import_module(f"torchtitan.models.{m}.config_registry")).items()
                      if callable(fn) and not name.startswith("_") and name[0].islower()
                      and getattr(fn, "__module__", "").endswith("config_registry"))
            for m in modules}


def refresh() -> None:
    """Regenerate the key list from the installed torchtitan."""
    import torchtitan

    data = {"version": getattr(torchtitan, "__version__", "0.3.0"), "sections": _sections(),
            "activation_checkpoint": _subcommands(), "config_functions": _config_functions()}
    KEYS_FILE.parent.mkdir(parents=True, exist_ok=True)
    KEYS_FILE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _own_cases() -> list[ConformanceCase]:
    """torchtitan knobs the shared grid may not reach: MXFP8, ZeRO-2 with one micro-batch, an uneven
    interleaved pipeline, CP, expert parallelism over tp x cp x dp_shard. Each must pass the rules."""
    def case(name, model_name, settings, plan):
        model = load_model(model_name).spec
        return ConformanceCase(name=f"torchtitan: {name}", plan=plan, model=model,
                               training=build_training(dict(settings), model=model))

    base = dict(tp=1, pp=1, dp=8, cp=1, ep=1, etp=1, vpp=1, micro_batch=1, recompute=0, recompute_num_layers=-1,
                recompute_modules=1, sequence_parallel=False, zero_stage=3, optimizer_offload=False,
                activation_offload_layers=0)
    cases = [
        case("MXFP8 Llama 3 8B", "llama3-8b", {"seq_length": 4096, "global_batch_size": 64, "precision": "fp8",
                                                "fp8_recipe": "mxfp8"}, dict(base, tp=2, dp=4, sequence_parallel=True)),
        case("ZeRO-2, one micro-batch", "llama3-8b", {"seq_length": 4096, "global_batch_size": 16},
             dict(base, dp=8, micro_batch=2, zero_stage=2)),
        case("uneven interleaved pipeline (80 layers on 3 stages of 3 chunks, the first one short)", "llama3-70b",
             {"seq_length": 4096, "global_batch_size": 96},
             dict(base, tp=8, pp=3, dp=2, vpp=3, zero_stage=0, sequence_parallel=True, recompute=2)),
        case("CP 4 with FSDP", "llama3-8b", {"seq_length": 32768, "global_batch_size": 16},
             dict(base, cp=4, dp=2, tp=1, recompute=2)),
        case("MoE ep 8 over tp x dp_shard", "qwen3-30b-a3b", {"seq_length": 4096, "global_batch_size": 64},
             dict(base, tp=2, dp=4, ep=8, sequence_parallel=True)),
        case("TP overlap as async TP", "llama3-70b", {"seq_length": 8192, "global_batch_size": 32,
                                                      "tp_comm_overlap": True},
             dict(base, tp=8, dp=4, sequence_parallel=True, recompute=2)),
        case("TP without sequence parallelism, DDP with one micro-batch", "llama3-8b",
             {"seq_length": 4096, "global_batch_size": 32}, dict(base, tp=4, dp=2, micro_batch=16, zero_stage=0)),
    ]
    for c in cases:
        plans = PlanArrays.from_columns({k: [v] for k, v in c.plan.items()})
        refused = [n for n, mask in tt_emit.violations(c.model, c.training, plans).items() if mask[0]]
        assert not refused, (c.name, refused)
    return cases


def _cases():
    return list(conformance_cases("torchtitan")) + _own_cases()


@pytest.fixture(scope="module")
def titan():
    pytest.importorskip("torchtitan.trainer")
    import torchtitan.config.manager  # noqa: F401

    return pytest


@pytest.fixture(autouse=True)
def blackwell(monkeypatch):
    """MXFP8's converter checks for an SM100 GPU when the config function runs: the only device check patched."""
    try:
        import torchtitan.components.quantization.mx as mx
    except ImportError:
        return
    monkeypatch.setattr(mx, "has_cuda_capability", lambda major, minor: True)


def _parse(argv: tuple[str, ...]):
    from torchtitan.config import ConfigManager

    # torchtitan's own arguments follow ``torchrun ... -m torchtitan.train``
    return ConfigManager().parse_args(list(argv[argv.index("torchtitan.train") + 1:]))


def _stage_chunks_per_rank(config, pp: int) -> list[list[int]]:
    """Layers of each virtual stage of each pipeline rank as torchtitan splits and places them (its own
    ``_get_pp_rank_to_stage_indices_mapping``: stage i on rank i mod pp, or a V for ZBV and DualPipeV)."""
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.pipeline_parallel import (_generate_llm_fqn_per_model_part, _get_pipeline_metadata,
                                                          _get_pp_rank_to_stage_indices_mapping)

    dims = ParallelDims.from_config(config.parallelism, world_size=_world(config))
    stages, layers, first, last = _get_pipeline_metadata(dims, config.parallelism, config.model_spec.model)
    parts = _generate_llm_fqn_per_model_part(stages, layers, first, last)
    assert stages == pp * (stages // pp)
    schedule = config.parallelism.pipeline_parallel_schedule
    return [[sum(1 for name in parts[i] if name.startswith("layers."))
             for i in _get_pp_rank_to_stage_indices_mapping(rank, pp, schedule, stages)] for rank in range(pp)]


def _stage_layers_per_rank(config, pp: int) -> list[int]:
    """Layers on each pipeline rank as torchtitan splits them."""
    return [sum(chunks) for chunks in _stage_chunks_per_rank(config, pp)]


def _world(config) -> int:
    p = config.parallelism
    return (p.data_parallel_replicate_degree * max(p.data_parallel_shard_degree, 1) * p.context_parallel_degree
            * p.tensor_parallel_degree * p.pipeline_parallel_degree)


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_torchtitan_loads_and_runs_the_priced_plan(titan, case):
    import torch
    from torch.distributed.pipelining.schedules import PipelineScheduleMulti, get_schedule_class
    from torchtitan.components.quantization.utils import has_quantization
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed.activation_checkpoint import FullAC
    from torchtitan.distributed.fsdp import get_fsdp_reshard_after_forward_policy

    emission = case.emission("torchtitan")
    knobs = case.knobs()
    config = _parse(emission.argv)
    p, t = config.parallelism, config.training
    # Trainer.__init__ before the model is built: TP divides the heads and KV heads, the sequence fits the
    # RoPE cache, weight tying without PP, the EP dispatcher's token shards.
    config.model_spec.model.update_from_config(config=config)

    dims = ParallelDims.from_config(p, world_size=knobs.world_size)
    assert (dims.tp, dims.pp, dims.cp, dims.dp_replicate * dims.dp_shard) == (knobs.tp, knobs.pp, knobs.cp, knobs.dp)
    if knobs.zero_stage >= 2:  # FSDP2, HSDP with dp_replicate copies of a dp / dp_replicate x cp shard group
        assert (dims.dp_replicate, dims.dp_shard) == (knobs.dp_replicate, knobs.dp // knobs.dp_replicate)
        assert dims.fsdp_enabled and dims.dp_replicate_enabled == (knobs.dp_replicate > 1)
    if case.model.is_moe:
        assert dims.ep == knobs.ep and (dims.dp_shard * dims.cp * dims.tp) % dims.ep == 0
    # Trainer.__init__: sequence divisor, batch arithmetic.
    divisor = (dims.tp if p.enable_sequence_parallel else 1) * (2 * dims.cp if dims.cp > 1 else 1)
    assert t.seq_len == case.training.seq_length and t.seq_len % divisor == 0
    batch_degree = dims.dp_replicate * dims.dp_shard
    assert t.global_batch_size == case.training.global_batch_size
    assert t.global_batch_size % (t.local_batch_size * batch_degree) == 0
    accumulation = t.global_batch_size // (t.local_batch_size * batch_degree)
    if dims.pp > 1:
        micro_batches = t.local_batch_size // p.pipeline_parallel_microbatch_size
        assert t.local_batch_size % p.pipeline_parallel_microbatch_size == 0
        assert (p.pipeline_parallel_microbatch_size, micro_batches * accumulation) == (knobs.micro_batch,
                                                                                      knobs.num_microbatches)
        schedule = get_schedule_class(p.pipeline_parallel_schedule)
        per_rank = _stage_layers_per_rank(config, dims.pp)
        assert per_rank[0] == knobs.stage_layers[0] and per_rank[-1] == knobs.stage_layers[-1]
        assert per_rank[1:-1] == list(knobs.stage_layers[1:-1])
        assert _stage_chunks_per_rank(config, dims.pp) == [list(chunks) for chunks in knobs.stage_chunks]
        stages_per_rank = len(_parts(config, dims)) // dims.pp
        assert stages_per_rank == knobs.vpp
        assert issubclass(schedule, PipelineScheduleMulti) == (knobs.vpp > 1)
        if knobs.vpp > 1:
            rounds = max(1, micro_batches // dims.pp)
            assert micro_batches % rounds == 0
        else:
            assert micro_batches >= dims.pp
    else:
        assert (t.local_batch_size, accumulation) == (knobs.micro_batch, knobs.num_microbatches)
    # Recompute, FSDP, precision, graphs.
    ac = config.activation_checkpoint
    assert (isinstance(ac, FullAC.Config) if knobs.recompute == "full" else ac is None), ac
    if knobs.zero_stage >= 2:
        assert dims.dp_shard == knobs.dp // knobs.dp_replicate
        assert get_fsdp_reshard_after_forward_policy(p.fsdp_reshard_after_forward, dims.pp > 1) == (knobs.zero_stage == 3)
    else:
        assert dims.dp_shard == 1 and dims.cp == 1
    assert has_quantization(config.model_spec.model) == (case.training.precision == "fp8")
    lm_head_mxfp8 = type(config.model_spec.model.lm_head).__qualname__.startswith("MXFP8")
    assert lm_head_mxfp8 == any("lm_head" in d for d in emission.differences)
    assert type(config.loss).__qualname__ == "ChunkedLossWrapper.Config"  # the difference the launch reports
    assert t.mixed_precision_param == "bfloat16" and t.mixed_precision_reduce == "float32" and t.dtype == "float32"
    assert t.disable_cuda_graphs == ("full_iteration" not in case.training.cuda_graph_scope)
    assert p.enable_sequence_parallel == (knobs.sequence_parallel and knobs.tp > 1)
    assert config.compile.enable_async_tensor_parallel == (case.training.tp_comm_overlap and knobs.tp > 1)
    # The model torchtitan builds is the priced one.
    model_cfg = config.model_spec.model
    built = built_dims(model_cfg)
    assert built == {name: int(getattr(case.model, name)) for name in built}
    if dims.cp > 1:
        from torchtitan.distributed.full_dtensor import validate_config

        with torch.device("meta"):
            model = model_cfg.build()
        validate_config(dims, model)


def _parts(config, dims):
    from torchtitan.distributed.pipeline_parallel import _generate_llm_fqn_per_model_part, _get_pipeline_metadata

    stages, layers, first, last = _get_pipeline_metadata(dims, config.parallelism, config.model_spec.model)
    return _generate_llm_fqn_per_model_part(stages, layers, first, last)


def built_dims(model) -> dict[str, int]:
    """:data:`optimizer.emit.torchtitan.DIM_FIELDS` of a torchtitan model config, where it has them."""
    layers = model.layers
    attention = layers[-1].attention
    kv = getattr(attention, "n_kv_heads", None) or getattr(getattr(attention, "qkv_linear", None), "n_kv_heads", None)
    dims = {"num_layers": len(layers), "hidden_size": model.dim, "vocab_size": model.vocab_size,
            "num_attention_heads": attention.n_heads, "mtp_layers": len(getattr(model, "mtp_layers", None) or [])}
    dims["num_kv_heads"] = kv if kv is not None else attention.n_heads  # MLA: one latent K/V per head
    dense = [layer for layer in layers if getattr(layer, "moe", None) is None]
    if dense:
        dims["ffn_hidden_size"] = dense[0].feed_forward.w1.out_features
    moe = next((layer.moe for layer in layers if getattr(layer, "moe", None) is not None), None)
    dims["num_experts"] = moe.num_experts if moe is not None else 0
    if moe is not None:
        dims["moe_ffn_hidden_size"] = moe.routed_experts.inner_experts.hidden_dim
    return dims


@pytest.mark.parametrize("chosen", tt_emit.CONFIG_FUNCTIONS, ids=lambda c: c.config)
def test_config_functions_build_the_listed_dimensions(titan, chosen):
    """The dimensions a plan's model is matched on are the ones the config function builds, its MoE
    dispatcher is the all-to-all, and its converters run the listed precision."""
    import importlib

    from torchtitan.components.quantization.utils import has_quantization

    if chosen.precision == "mxfp8":
        pytest.importorskip("torchao")
    config = getattr(importlib.import_module(f"torchtitan.models.{chosen.module}.config_registry"), chosen.config)()
    model = config.model_spec.model
    listed = dict(zip(tt_emit.DIM_FIELDS, chosen.dims))
    built = built_dims(model)
    assert built == {name: listed[name] for name in built}
    assert has_quantization(model) == (chosen.precision != "bf16")
    assert (config.compile.enable and "model" in config.compile.components) == chosen.compiles_model
    for layer in model.layers:
        if getattr(layer, "moe", None) is not None:
            assert type(layer.moe.routed_experts.token_dispatcher).__qualname__ == "AllToAllTokenDispatcher.Config"


def test_key_list_is_current(titan):
    """The checked-in key list is what the installed torchtitan generates."""
    data = json.loads(KEYS_FILE.read_text())
    assert data["sections"] == _sections()
    assert data["activation_checkpoint"] == _subcommands()
    assert data["config_functions"] == _config_functions()


if __name__ == "__main__":
    if "--refresh" in sys.argv:
        refresh()
        print(f"wrote {KEYS_FILE}")
