"""Selective recompute by module (Megatron ``--recompute-modules``): bytes dropped, work added, flags.

Each module drops exactly the tensors it owns in the per-layer inventory (tests/test_activations.py
derives that inventory by hand) and reruns exactly its forward: element-wise kernels for ``layernorm``
and ``moe_act``, GEMMs for ``mla_up_proj``, ``mlp``, ``moe`` and ``shared_experts``.
"""

import itertools

import pytest

from cost_model.activations import layer_activations, routed_pairs_per_rank
from cost_model.evaluate import evaluate
from cost_model.flops import selective_module_flops_per_sequence
from cost_model.model_loader import load_model, model_from_hf
from cost_model.plan import MODULE_BIT, SELECTIVE, PlanArrays, module_mask, module_names
from cost_model.training_spec import TrainingSpec
from hardware.loader import load_cluster
from optimizer.emit import emit
from optimizer.plan_rules import violations
from tests.test_cli import run as run_cli

LLAMA70 = model_from_hf({"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192,
                         "intermediate_size": 28672, "num_attention_heads": 64, "num_key_value_heads": 8,
                         "vocab_size": 128256, "tie_word_embeddings": False})
DEEPSEEK = load_model("deepseek-v3").spec
MODERN = TrainingSpec(seq_length=8192, global_batch_size=64, dropout=False, flash_attention=True)
H, F, S = 8192, 28672, 8192


def activations(model, training, modules, **plan):
    plan.setdefault("tp", 1)
    records = [dict(plan, recompute="none")] + [dict(plan, recompute="selective", recompute_modules=module_mask(m))
                                                for m in modules]
    return layer_activations(model, training, PlanArrays.from_records(records))


def test_layernorm_drops_both_norm_outputs_split_by_sp():
    t = 8
    acts = activations(LLAMA70, MODERN, [["layernorm"]], tp=t, sequence_parallel=True)
    dropped = acts.dense_full[0] - acts.dense_full[1]
    assert dropped == pytest.approx(2 * (2 * H) / t * S, rel=1e-12)  # QKV input and fc1 input, bf16


def test_mlp_keeps_only_its_input():
    acts = activations(LLAMA70, MODERN, [["mlp"], ["layernorm", "mlp"]])
    # fc1 output (gate and up, 2F wide) and fc2 input (F) go; the bf16 MLP input stays
    assert acts.dense_full[0] - acts.dense_full[1] == pytest.approx((2 * 2 * F + 2 * F) * S, rel=1e-12)
    # with layernorm too, the MLP input (the norm-2 output) is discarded as well
    assert acts.dense_full[1] - acts.dense_full[2] == pytest.approx(2 * 2 * H * S, rel=1e-12)


def test_fp8_mlp_checkpoint_keeps_a_bf16_input():
    fp8 = TrainingSpec(seq_length=S, global_batch_size=64, precision="fp8")
    acts = activations(LLAMA70, fp8, [["mlp"]])
    # fc1 output 2F x 2 bytes and the 1-byte fc2 input go; the input grows from 1 byte (fp8 GEMM input) to 2
    assert acts.dense_full[0] - acts.dense_full[1] == pytest.approx((4 * F + F - H) * S, rel=1e-12)


def test_mla_up_proj_drops_per_head_q_k_v():
    s = 4096
    training = TrainingSpec(seq_length=s, global_batch_size=64)
    acts = activations(DEEPSEEK, training, [["mla_up_proj"]])
    a, qk, v = 128, 192, 128  # heads, q/k head dim (128 nope + 64 rope), v head dim
    assert acts.moe_full[0] - acts.moe_full[1] == pytest.approx(2 * a * (qk + qk + v) * s, rel=1e-12)


def test_moe_act_and_moe_on_routed_pairs():
    s = 4096
    training = TrainingSpec(seq_length=s, global_batch_size=64)
    plan = dict(ep=8, tp=1)
    acts = activations(DEEPSEEK, training, [["moe_act"], ["moe"]], **plan)
    pairs = routed_pairs_per_rank(DEEPSEEK, training, PlanArrays.from_records([plan]))[0]
    assert pairs == s * 8  # top-8 routing, capacity factor 1
    assert acts.moe_full[0] - acts.moe_full[1] == pytest.approx(2 * 2048 * pairs, rel=1e-12)  # fc2 inputs
    h, f, shared, experts = 7168, 2048, 2048, 256
    per_pair = 2 * h + 2 * 2 * f + 2 * f + 4           # fc1 input, fc1 output, fc2 input, fp32 probability
    per_token = 4 * experts + (2 * 2 * shared + 2 * shared) + (2 * h - 2 * h)  # probs, shared; input kept at 2 B
    assert acts.moe_full[0] - acts.moe_full[2] == pytest.approx(per_pair * pairs + per_token * s, rel=1e-12)


def test_every_module_set_saves_memory_and_costs_time():
    """Adding modules never raises activations and never lowers the step time."""
    cluster = load_cluster("h800x256")
    training = TrainingSpec(seq_length=4096, global_batch_size=256)
    names = [n for n in module_names(sum(MODULE_BIT.values())) if n != "core_attn"]
    sets = [combo for r in range(len(names) + 1) for combo in itertools.combinations(names, r)]
    records = [dict(tp=1, pp=8, dp=32, ep=32, recompute="selective" if combo else "none",
                    recompute_modules=module_mask(combo)) for combo in sets]
    metrics = evaluate(DEEPSEEK, training, cluster, PlanArrays.from_records(records))
    acts = metrics.memory_parts_bytes["activations"]
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            if set(a) < set(b):
                assert acts[j] <= acts[i] * (1 + 1e-12), (a, b)
                assert metrics.step_time_s[j] >= metrics.step_time_s[i] * (1 - 1e-12), (a, b)


def test_recompute_time_and_flops_of_the_mlp():
    cluster = load_cluster("h100x64")
    records = [dict(tp=8, pp=4, dp=2, sequence_parallel=True, recompute="none"),
               dict(tp=8, pp=4, dp=2, sequence_parallel=True, recompute="selective", recompute_modules=MODULE_BIT["mlp"]),
               dict(tp=8, pp=4, dp=2, sequence_parallel=True, recompute="selective",
                    recompute_modules=MODULE_BIT["layernorm"])]
    m = evaluate(LLAMA70, MODERN, cluster, PlanArrays.from_records(records))
    # HFU counts the rerun MLP GEMMs: 80 layers x 2 s (3 h F) per sequence, global batch of 64
    extra = m.hardware_flops_per_step - m.model_flops_per_step
    assert extra[0] == 0
    assert extra[1] == pytest.approx(80 * 2 * S * 3 * H * F * 64, rel=1e-12)
    assert extra[2] == 0  # norms rerun element-wise kernels only
    recompute = m.step_time_parts_s["recompute"]
    assert recompute[0] == 0 and 0 < recompute[2] < 0.02 * recompute[1]  # element-wise norms vs three GEMMs
    # With SP a layer's forward sends an all-gather and a reduce-scatter per half (4 units of one
    # all-gather's bytes), its backward the same plus the re-gather of both column-parallel inputs (6):
    # the MLP's forward pair, sent again, is 2 units of 10, a fifth more traffic.
    assert m.comm_bytes_per_step["tp"][1] / m.comm_bytes_per_step["tp"][0] == pytest.approx(1.2, rel=1e-9)


def test_module_flops_for_deepseek():
    flops = selective_module_flops_per_sequence(DEEPSEEK, 4096)
    s, a = 4096, 128
    up = 2 * s * (1536 * a * 192 + 512 * a * (128 + 128))
    assert flops["mla_up_proj"] == pytest.approx(61 * up, rel=1e-12)
    assert flops["mlp"] == pytest.approx(3 * 2 * s * 3 * 7168 * 18432, rel=1e-12)
    assert flops["shared_experts"] == pytest.approx(58 * 2 * s * 3 * 7168 * 2048, rel=1e-12)


def test_modules_the_model_lacks_break_a_rule():
    bad = PlanArrays.from_records([dict(tp=1, recompute="selective", recompute_modules=module_mask(["moe_act"])),
                                   dict(tp=1, recompute="selective", recompute_modules=module_mask(["mlp"]))])
    broken = violations(LLAMA70, MODERN, bad, allow_uneven=True)["recompute_modules_exist"]
    assert broken.tolist() == [True, False]


def test_unknown_module_name():
    with pytest.raises(ValueError, match="choose from core_attn"):
        module_mask(["attention"])


def test_emitters_name_the_modules():
    plan = dict(tp=1, pp=16, dp=16, cp=1, ep=8, etp=1, vpp=1, micro_batch=1, recompute=SELECTIVE,
                recompute_num_layers=-1, recompute_modules=module_mask(["mla_up_proj", "moe_act"]),
                sequence_parallel=False, zero_stage=1, optimizer_offload=False)
    training = TrainingSpec(seq_length=4096, global_batch_size=2048)
    args = emit("megatron", plan, DEEPSEEK, training).text
    assert "--recompute-granularity selective" in args and "--recompute-modules mla_up_proj moe_act" in args
    assert "model.recompute_modules=[mla_up_proj,moe_act]" in emit("megatron-bridge", plan, DEEPSEEK, training).text


def test_cli_evaluate_with_modules(capsys):
    code, out, _ = run_cli(capsys, "evaluate", "h100x8", "llama3-8b", "--tp", "2", "--zero-stage", "1",
                           "--sequence-parallel", "--seq-len", "4096", "--global-batch", "32", "--recompute",
                           "selective", "--recompute-modules", "layernorm", "--recompute-modules", "mlp",
                           "--format", "json")
    plan = __import__("json").loads(out)["plan"]
    assert code == 0 and plan["recompute"] == "selective" and plan["recompute_modules"] == ["layernorm", "mlp"]
    code, _, err = run_cli(capsys, "evaluate", "h100x8", "llama3-8b", "--recompute", "selective",
                           "--recompute-modules", "mla_up_proj")
    assert code == 1  # the rule names the module the model lacks
    code, _, err = run_cli(capsys, "evaluate", "h100x8", "llama3-8b", "--recompute", "selective",
                           "--recompute-modules", "attn")
    assert code == 2 and "--recompute-modules" in err and "choose from" in err


def test_search_uses_modules_when_they_are_cheapest(capsys):
    # DeepSeek-V3 on 512 H800 at 4K: the best plans drop norm outputs and expert activations rather
    # than recompute whole layers (on 256 GPUs memory is so tight that full recompute wins).
    code, out, _ = run_cli(capsys, "h800x512", "deepseek-v3", "--seq-len", "4096", "--global-batch", "2048",
                           "--top", "3", "--format", "json")
    assert code == 0
    plans = __import__("json").loads(out)["plans"]
    assert any(p["recompute"] == "selective" and "moe_act" in p["recompute_modules"] for p in plans)
    for p in plans:
        if p["recompute"] != "selective":
            assert p["recompute_modules"] == []
