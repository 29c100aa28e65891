"""Serving workloads: presets, files, traces, length distributions and one-line input errors."""

import math

import numpy as np
import pytest

from cost_model.serving.workload import (LengthSpec, SLOSpec, WorkloadSpec, list_workload_presets, load_workload,
                                         read_trace)
from hardware.errors import InputError


def test_presets_named_by_the_issue_load():
    names = set(list_workload_presets())
    assert {"chat-1k-1k", "rag-8k-1k", "reasoning-1k-8k", "mlperf-llama2-70b-server", "mlperf-llama2-70b-offline",
            "fixed-128-128", "fixed-1k-1k", "fixed-1k-2k"} <= names
    for name in names:
        workload = load_workload(name)
        assert workload.name == name and workload.input_tokens.mean() >= 1


def test_mlperf_server_preset_is_the_published_rules():
    # mlperf.conf: llama2-70b.Server ttft_latency 2000, tpot_latency 200 at the 99th percentile;
    # README: 294.45 tokens per sample; prompts and outputs cut at 1,024 tokens.
    w = load_workload("mlperf-llama2-70b-server")
    assert (w.slo.ttft_ms, w.slo.tpot_ms, w.slo.percentile) == (2000, 200, 99)
    assert w.output_tokens.mean() == pytest.approx(294.45)
    assert w.model_len == 2048 and w.arrival == "max_load"
    assert load_workload("mlperf-llama2-70b-offline").slo is None


def test_lognormal_through_p50_p99():
    spec = LengthSpec(p50_tokens=300, p99_tokens=2000)
    np.testing.assert_allclose(spec.quantile([0.5, 0.99]), [300, 2000], rtol=1e-6)
    sigma = math.log(2000 / 300) / 2.3263478740408408
    assert spec.mean() == pytest.approx(300 * math.exp(sigma ** 2 / 2))
    assert spec.second_moment() == pytest.approx(300 ** 2 * math.exp(2 * sigma ** 2))


def test_truncated_lognormal_moments_match_sampling():
    spec = LengthSpec(p50_tokens=300, p99_tokens=2000, max_tokens=1024)
    rng = np.random.default_rng(7)
    draws = np.minimum(np.exp(rng.normal(math.log(300), math.log(2000 / 300) / 2.3263478740408408, 1_000_000)), 1024)
    assert spec.mean() == pytest.approx(draws.mean(), rel=3e-3)
    assert spec.second_moment() == pytest.approx((draws ** 2).mean(), rel=5e-3)
    assert spec.quantile(0.999) == 1024 and spec.longest() == 1024


def test_file_with_preset_and_overrides(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("preset: chat-1k-1k\nrequest_rate_per_s: 12\nprefix_cache_hit_rate: 0.25\n"
                    "output_tokens: {p50: 200, p99: 1500, max: 4000}\nspeculative: {draft_tokens: 3, acceptance_rate: 0.6}\n")
    w = load_workload(str(path))
    assert w.name == "chat-1k-1k" and w.arrival == "open" and w.request_rate_per_s == 12
    assert w.prefill_tokens_mean == pytest.approx(750)
    assert w.model_len == 1000 + 4000 and w.slo.ttft_ms == 450
    assert w.speculative.draft_tokens == 3


def test_trace_csv_and_jsonl(tmp_path):
    (tmp_path / "t.csv").write_text("input_tokens,output_tokens\n100,10\n300,30\n200,20\n")
    (tmp_path / "t.jsonl").write_text('{"input_tokens": 100, "output_tokens": 10}\n{"input_tokens": 300, "output_tokens": 50}\n')
    (tmp_path / "w.yaml").write_text("trace: t.csv\nconcurrency: 8\n")
    w = load_workload(str(tmp_path / "w.yaml"))
    assert w.input_tokens.mean() == pytest.approx(200) and w.output_tokens.longest() == 30
    assert w.input_tokens.quantile(0.5) == pytest.approx(200) and w.model_len == 330
    assert read_trace(tmp_path / "t.jsonl") == ((100.0, 300.0), (10.0, 50.0))


@pytest.mark.parametrize("text, field, fragment", [
    ("input_tokens: 1000\noutput_tokens: 100\nrequest_rate: 5\n", "request_rate", "did you mean 'request_rate_per_s'"),
    ("input_tokens: 1000\n", "output_tokens", "required"),
    ("input_tokens: {p50: 500}\noutput_tokens: 100\n", "input_tokens", "p50 and p99"),
    ("input_tokens: {p50: 900, p99: 500}\noutput_tokens: 100\n", "input_tokens", "at least p50"),
    ("input_tokens: 1000\noutput_tokens: 100\nprefix_cache_hit_rate: 1.5\n", "prefix_cache_hit_rate", "fraction"),
    ("input_tokens: 1000\noutput_tokens: 100\nrequest_rate_per_s: 2\nconcurrency: 4\n", "concurrency", "not both"),
    ("input_tokens: 1000\noutput_tokens: 100\nslo: {ttft_ms: 500}\n", "slo.tpot_ms", "required"),
    ("input_tokens: 1000\noutput_tokens: 100\nslo: {ttft_ms: 500, tpot_ms: 50, percentile: 100}\n", "slo.percentile", "[50, 100)"),
    ("input_tokens: 1000\noutput_tokens: 100\nspeculative: {draft_tokens: 2, acceptance_rate: 1.2}\n", "speculative.acceptance_rate", "fraction"),
    ("input_tokens: 1000\noutput_tokens: 100\nconcurrency: 2.5\n", "concurrency", "whole number"),
    ("input_tokens: '1000'\noutput_tokens: 100\n", "input_tokens", "number"),
    ("input_tokens: 1000\noutput_tokens: 100\nmax_model_len: 512\n", "max_model_len", "shorter"),
    ("preset: chat-1k\n", "preset", "did you mean 'chat-1k-1k'"),
    ("trace: missing.csv\n", "", "file not found"),
])
def test_bad_fields_are_one_line_errors(tmp_path, text, field, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_workload(str(path))
    message = str(info.value)
    assert "\n" not in message and fragment in message and (field in message)
    assert message.startswith(str(tmp_path)) or "missing.csv" in message


def test_bad_trace_rows(tmp_path):
    (tmp_path / "t.csv").write_text("input_tokens,output_tokens\n100,10\n-3,5\n")
    with pytest.raises(InputError, match=r"row 3 input_tokens: must be a whole number"):
        read_trace(tmp_path / "t.csv")
    (tmp_path / "u.csv").write_text("prompt,answer\n1,2\n")
    with pytest.raises(InputError, match="header"):
        read_trace(tmp_path / "u.csv")


def test_unknown_preset_name():
    with pytest.raises(InputError, match="unknown workload preset 'rag-8k'.*did you mean 'rag-8k-1k'"):
        load_workload("rag-8k")


def test_slo_attainment_raises_the_checked_quantile():
    assert SLOSpec(ttft_ms=1, tpot_ms=1, percentile=90).quantile == pytest.approx(0.90)
    # 98% of requests must meet both: each metric at 1 - 0.02/2 = 0.99 (union bound).
    assert SLOSpec(ttft_ms=1, tpot_ms=1, percentile=90, attainment=0.98).quantile == pytest.approx(0.99)


def test_workload_spec_validates_directly():
    with pytest.raises(ValueError, match="not both"):
        WorkloadSpec(name="x", input_tokens=LengthSpec(mean_tokens=10), output_tokens=LengthSpec(mean_tokens=10),
                     request_rate_per_s=1.0, concurrency=2)
