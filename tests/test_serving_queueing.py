"""Queueing arithmetic of the serving model, against hand-derived values."""

import math

import numpy as np
import pytest

from cost_model.serving import queueing as q
from hardware.loader import load_cluster


def test_littles_law_both_ways():
    # 12 requests/s that each stay 2.5 s: 30 in the system; 30 in flight for 2.5 s each: 12 requests/s.
    assert q.little_in_system(12.0, 2.5) == pytest.approx(30.0)
    assert q.little_rate_per_s(30.0, 2.5) == pytest.approx(12.0)
    np.testing.assert_allclose(q.little_rate_per_s([64, 64], [8.0, 0.0]), [8.0, 0.0])


def test_md1_mean_wait_is_rho_over_2mu_one_minus_rho():
    # service 0.1 s (mu = 10/s), arrivals 8/s: rho 0.8, W = 0.8 / (2 * 10 * 0.2) = 0.2 s.
    assert q.md1_mean_wait_s(8.0, 0.1) == pytest.approx(0.2)
    # rho = 0.5: 0.5 / (2 * 10 * 0.5) = 0.05 s; an overloaded server waits forever.
    np.testing.assert_allclose(q.md1_mean_wait_s([5.0, 10.0, 0.0], 0.1), [0.05, np.inf, 0.0])


def test_mg1_exponential_service_is_mm1():
    # Exponential service, mean 0.1 s: E[S^2] = 2 * 0.01; P-K gives M/M/1's rho/(mu - lambda) = 0.8 / 2 = 0.4 s.
    assert q.mg1_mean_wait_s(8.0, 0.1, 0.02) == pytest.approx(0.4)


def test_wait_quantile_matches_mm1_exactly():
    # M/M/1, lambda 8, mu 10: P(W > t) = rho exp(-(mu - lambda) t); the 99th percentile solves
    # 0.8 exp(-2 t) = 0.01: t = ln(80) / 2 = 2.191 s.
    mean = q.mg1_mean_wait_s(8.0, 0.1, 0.02)
    assert q.wait_quantile_s(mean, 0.8, 0.99) == pytest.approx(math.log(80.0) / 2.0)
    # At q <= 1 - rho most requests do not wait at all.
    assert q.wait_quantile_s(mean, 0.8, 0.15) == 0.0
    assert q.wait_quantile_s(1.0, 1.2, 0.5) == np.inf


def test_speculative_tokens_per_step():
    # k = 3, alpha = 0.5: 1 + 0.5 + 0.25 + 0.125 = 1.875 tokens a step; alpha = 0: 1; k = 0: 1.
    np.testing.assert_allclose(q.speculative_tokens_per_step([3, 3, 0, 4], [0.5, 0.0, 0.9, 0.8]),
                               [1.875, 1.0, 1.0, (1 - 0.8 ** 5) / 0.2])


def test_prefill_decode_ratio_and_instances():
    # A prefill instance does 10 requests/s, a decode instance 4: 0.4 prefill instances per decode one;
    # 100 requests/s need 10 prefill and 25 decode instances (10 x 10 = 25 x 4 = 100).
    assert q.prefill_decode_ratio(10.0, 4.0) == pytest.approx(0.4)
    np.testing.assert_array_equal(q.instances_for_rate(100.0, [10.0, 4.0, 3.0, 0.0]), [10, 25, 34, np.inf])


def test_closed_loop_split_between_prefill_and_decode():
    # 64 in flight, prefill 2 steps a request, decode 126: 64 / (1 + 2/126) = 63.0 decoding.
    assert q.closed_loop_decode_batch(64, 2, 126) == pytest.approx(64 / (1 + 2 / 126))


def test_tpot_quantile_binomial_interference():
    # f = 0.25 of 100 steps carry a chunk that adds 30 ms to a 20 ms step: mean TPOT 27.5 ms; p99 adds
    # z_0.99 sqrt(0.25 * 0.75 / 100) = 2.3263 * 0.04330 = 0.1007 of the 30 ms.
    mean = q.tpot_quantile_s(0.020, 0.030, 0.25, 100, 1.0, 0.5)
    p99 = q.tpot_quantile_s(0.020, 0.030, 0.25, 100, 1.0, 0.99)
    assert mean == pytest.approx(0.0275)
    assert p99 == pytest.approx(0.020 + 0.030 * (0.25 + 2.3263479 * math.sqrt(0.25 * 0.75 / 100)), rel=1e-6)
    # Speculative decoding divides by the tokens a step yields.
    assert q.tpot_quantile_s(0.020, 0.0, 0.0, 100, 2.0, 0.99) == pytest.approx(0.010)


def test_mixed_step_fraction():
    # 4 requests/s of 1000 prompt tokens arrive 240 prompt tokens in a 60 ms mean step: 240 / 2048 = 0.117 of
    # the steps carry a 2048-token chunk.
    assert q.mixed_step_fraction(4.0, 1000.0, 2048.0, 0.06) == pytest.approx(4 * 1000 * 0.06 / 2048)


def test_kv_transfer_nvlink_faster_than_nic():
    topology = load_cluster("h100x64").topology
    kv_bytes = 1000 * 327_680  # 1,000 tokens of Llama 3 70B BF16 KV (320 KiB a token)
    nvlink, nic = q.kv_transfer_time_s(topology, kv_bytes, 4, [True, False])
    # NVLink: 81.92 MB per GPU at the preset's per-GPU NVLink rate x its send/recv efficiency, plus one latency.
    rate = topology.scaleup_GBps * 1e9 * topology.scaleup_efficiency.send_recv
    assert nvlink == pytest.approx(kv_bytes / 4 / rate + topology.scaleup_latency_us * 1e-6, rel=1e-6)
    assert nic > 5 * nvlink


def test_moe_imbalance_shrinks_with_tokens():
    # 8 ranks, top-8: 64 tokens put mu = 64 assignments on a rank; 1 + sqrt(2 ln 8 * 7/8 / 64) = 1.3014.
    assert q.moe_max_load_factor(64, 8, 8) == pytest.approx(1 + math.sqrt(2 * math.log(8) * 0.875 / 64))
    factors = q.moe_max_load_factor([1, 16, 256, 4096], 8, 32)
    assert np.all(np.diff(factors) < 0) and factors[0] <= 32 and factors[-1] < 1.1
    assert q.moe_max_load_factor(10, 2, 1) == 1.0


def test_prefix_cache_cuts_prefill_tokens():
    np.testing.assert_allclose(q.prefill_tokens_after_cache(8000, [0.0, 0.75]), [8000, 2000])


def test_closed_loop_mean_value_analysis_by_hand():
    # X = 1 request/s, S = 0.5 s at the prompt queue, D = 2 requests in flight without waiting:
    # C^2 - (D - rho) C - rho (D - rho) / (1 - rho) = 0 -> C = (1.5 + sqrt(2.25 + 6)) / 2 = 2.1861,
    # and Schweitzer's wait u rho S / (1 - u rho), u = (C - 1) / C, closes Little's law C = D + X W.
    from cost_model.serving.queueing import closed_loop_wait
    c, w = closed_loop_wait(1.0, 0.5, 2.0)
    assert c == pytest.approx((1.5 + math.sqrt(8.25)) / 2)
    u = (c - 1) / c
    assert w == pytest.approx(u * 0.5 * 0.5 / (1 - u * 0.5))
    assert c == pytest.approx(2.0 + 1.0 * w)
    # One user never waits; many users tend to the M/M/1 wait rho S / (1 - rho) (the product-form limit).
    assert closed_loop_wait(0.4, 0.5, 1.0)[1] == pytest.approx(0.0, abs=1e-12)
    assert closed_loop_wait(1.0, 0.5, 1e6)[1] == pytest.approx(0.5 * 0.5 / 0.5, rel=1e-4)
    assert np.isinf(closed_loop_wait(2.0, 0.5, 3.0)[0])


def _padded_by_enumeration(mean, block):
    """E[block ceil(X / block) | X > 0] for X ~ Poisson(mean), summing the pmf term by term."""
    top = int(mean + 20 * math.sqrt(mean) + 4 * block)
    total = 0.0
    for x in range(1, top):
        pmf = math.exp(-mean + x * math.log(mean) - math.lgamma(x + 1))
        total += block * math.ceil(x / block) * pmf
    return total / (1.0 - math.exp(-mean))


def test_expert_block_padding_by_hand():
    # A mean of 64 rows on 64-row blocks: P(X > 64) = 0.4668 of the experts compute a second block, so 93.9 rows
    # on average, not the 64 that padding the mean gives; far below a block every touched expert computes one
    # block; far above it the padding averages (block - 1) / 2 = 31.5 rows.
    assert q.expected_block_padded_rows(64.0, 64) == pytest.approx(93.8765, abs=1e-3)
    for mean in (3.0, 40.0, 64.0, 100.0, 300.0, 1000.0):
        assert q.expected_block_padded_rows(mean, 64) == pytest.approx(_padded_by_enumeration(mean, 64), rel=2e-3)
    assert q.expected_block_padded_rows(8.0, 64) == pytest.approx(64.0, rel=1e-12)
    assert q.expected_block_padded_rows(4096.0, 64) == pytest.approx(4096.0 + 31.5, abs=0.05)
    assert q.expected_block_padded_rows(0.0, 64) == 0.0


def test_expert_block_padding_never_falls_as_rows_grow():
    means = np.linspace(0.01, 3000.0, 4001)
    padded = q.expected_block_padded_rows(means, 128)
    assert np.all(np.diff(padded) >= -1e-9)
    assert np.all(padded >= np.maximum(means / -np.expm1(-means), 128.0) - 1e-9)  # at least the mean count, one block
