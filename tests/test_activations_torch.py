"""The activation model against a real implementation: bytes a PyTorch transformer layer saves for backward.

Runs when PyTorch is installed (``pip install -e ".[validate]"``); skipped otherwise. A layer is built
from the same operations Megatron-LM runs (fused QKV and gate/up projections, a SwiGLU kernel that saves
its input and recomputes SiLU, a fused RMSNorm that saves its input and the fp32 inverse RMS, PyTorch's
scaled-dot-product attention as the flash kernel), run forward in bf16 on the CPU, and every tensor autograd
saves is counted once per storage through ``torch.autograd.graph.saved_tensors_hooks``. Parameters are
not activations and are left out. The count must match :mod:`cost_model.activations` for the same
configuration: exactly up to the small per-token statistics the model ignores (norm mean/rstd, 4-8 bytes
per token against kilobytes per token).
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from cost_model.activations import layer_activations  # noqa: E402
from cost_model.model_loader import model_input_from_mapping  # noqa: E402
from cost_model.plan import PlanArrays  # noqa: E402
from cost_model.training_spec import TrainingSpec  # noqa: E402


class SavedBytes:
    """Sum the bytes of distinct storages autograd saves, leaving out parameters and per-token norm
    statistics (tensors whose last dimension is 1), which the model ignores by design."""

    def __init__(self, parameters):
        self.parameter_storages = {p.untyped_storage().data_ptr() for p in parameters}
        self.storages: dict[int, int] = {}

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.parameter_storages and tensor.shape[-1] != 1:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    counter = SavedBytes(list(layer.parameters()))
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        out = layer(x)
    out.float().sum().backward()  # the graph really is usable
    return counter.total


class _Dropout(torch.autograd.Function):
    """Dropout as the CUDA kernel Megatron uses runs it: a 1-byte boolean mask is saved. (PyTorch's CPU
    fallback saves the mask in the activation dtype, 2 bytes, which is not what runs on GPUs.)"""

    @staticmethod
    def forward(ctx, x, p):
        mask = torch.rand_like(x, dtype=torch.float32) >= p
        ctx.save_for_backward(mask)
        ctx.scale = 1.0 / (1.0 - p)
        return x * mask * ctx.scale

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask * ctx.scale, None


def dropout(x, p):
    return _Dropout.apply(x, p)


class GPTLayer(nn.Module):
    """GPT-3 layer as Korthikanti et al. 2022 count it: LayerNorm, unfused attention with dropout, GeLU 4h MLP."""

    def __init__(self, h: int, heads: int, p: float = 0.1):
        super().__init__()
        self.heads, self.p = heads, p
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)

    def forward(self, x):  # x: [s, b, h]
        s, b, h = x.shape
        d = h // self.heads
        qkv = self.qkv(self.ln1(x)).view(s, b, 3, self.heads, d).permute(2, 1, 3, 0, 4)  # [3, b, a, s, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(d))
        probs = dropout(torch.softmax(scores, dim=-1), self.p)
        context = torch.matmul(probs, v).permute(2, 0, 1, 3).reshape(s, b, h)
        x = x + dropout(self.proj(context), self.p)
        y = self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return x + dropout(y, self.p)


class _SwiGLU(torch.autograd.Function):
    """Megatron's fused bias-SwiGLU: saves the fc1 output [gate, up] and recomputes SiLU in backward."""

    @staticmethod
    def forward(ctx, gate_up):
        ctx.save_for_backward(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        (gate_up,) = ctx.saved_tensors
        gate, up = gate_up.float().chunk(2, dim=-1)
        sig = torch.sigmoid(gate)
        grad = grad.float()
        d_gate = grad * up * sig * (1 + gate * (1 - sig))
        return torch.cat([d_gate, grad * gate * sig], dim=-1).to(gate_up.dtype)


class _RMSNorm(torch.autograd.Function):
    """A fused RMSNorm kernel (Apex / Transformer Engine): saves its input and the fp32 inverse RMS."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x.float() * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        xf, g = x.float(), grad.float() * weight.float()
        xhat = xf * rstd
        dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
        return dx.to(x.dtype), (grad.float() * xhat).sum(dim=tuple(range(x.dim() - 1))).to(weight.dtype), None


class RMSNorm(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(h))

    def forward(self, x):
        return _RMSNorm.apply(x, self.weight, 1e-5)


class LlamaLayer(nn.Module):
    """Llama layer: RMSNorm, fused QKV with GQA, SDPA (flash) causal attention, SwiGLU MLP, no dropout, no bias."""

    def __init__(self, h: int, heads: int, kv_heads: int, ffn: int):
        super().__init__()
        self.heads, self.kv_heads, self.d = heads, kv_heads, h // heads
        self.n1, self.n2 = RMSNorm(h), RMSNorm(h)
        self.qkv = nn.Linear(h, (heads + 2 * kv_heads) * self.d, bias=False)
        self.proj = nn.Linear(h, h, bias=False)
        self.fc1, self.fc2 = nn.Linear(h, 2 * ffn, bias=False), nn.Linear(ffn, h, bias=False)

    def forward(self, x):  # x: [b, s, h]
        b, s, h = x.shape
        qkv = self.qkv(self.n1(x))
        q, k, v = qkv.split([self.heads * self.d, self.kv_heads * self.d, self.kv_heads * self.d], dim=-1)
        q = q.view(b, s, self.heads, self.d).transpose(1, 2)
        k = k.view(b, s, self.kv_heads, self.d).transpose(1, 2)
        v = v.view(b, s, self.kv_heads, self.d).transpose(1, 2)
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.proj(context.transpose(1, 2).reshape(b, s, h))
        return x + self.fc2(_SwiGLU.apply(self.fc1(self.n2(x))))


def predicted(config: dict, training: TrainingSpec, micro_batch: int) -> float:
    spec = model_input_from_mapping(config).spec
    plans = PlanArrays.from_records([dict(tp=1, micro_batch=micro_batch)])
    return float(layer_activations(spec, training, plans).dense_full[0])


def test_gpt_layer_matches_korthikanti_inventory():
    torch.manual_seed(0)
    s, b, h, a = 128, 2, 256, 4
    layer = GPTLayer(h, a).to(torch.bfloat16)
    x = torch.randn(s, b, h, dtype=torch.bfloat16, requires_grad=True)
    measured = saved_bytes(layer, x)
    config = {"model_type": "gpt2", "num_hidden_layers": 1, "hidden_size": h, "num_attention_heads": a,
              "vocab_size": 1000, "intermediate_size": 4 * h, "n_positions": s}
    expected = predicted(config, TrainingSpec(seq_length=s, global_batch_size=b, dropout=True, flash_attention=False), b)
    assert expected == s * b * h * (34 + 5 * a * s / h)
    assert measured == expected


def test_llama_layer_matches_flash_gqa_swiglu_inventory():
    torch.manual_seed(0)
    s, b, h, a, kv, ffn = 256, 2, 512, 8, 2, 1408
    layer = LlamaLayer(h, a, kv, ffn).to(torch.bfloat16)
    x = torch.randn(b, s, h, dtype=torch.bfloat16, requires_grad=True)
    measured = saved_bytes(layer, x)
    config = {"model_type": "llama", "num_hidden_layers": 1, "hidden_size": h, "num_attention_heads": a,
              "num_key_value_heads": kv, "intermediate_size": ffn, "vocab_size": 1000}
    expected = predicted(config, TrainingSpec(seq_length=s, global_batch_size=b), b)
    assert measured == pytest.approx(expected, rel=1e-9)
