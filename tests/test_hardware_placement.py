"""Rank placement against Megatron's rank order, checked by brute-force enumeration."""

import itertools

import numpy as np
import pytest

from hardware import DEFAULT_RANK_ORDER, InputError, dense_placement, expert_placement, parse_rank_order


def brute_force(sizes: dict[str, int], order: str, dims: tuple[str, ...], domain: int) -> int:
    """Min over groups of the largest number of its members in one domain (Megatron rank numbering)."""
    names = order.split("-")
    strides, stride = {}, 1
    for name in names:
        strides[name] = stride
        stride *= sizes[name]
    others = [n for n in names if n not in dims]
    worst = None
    for fixed in itertools.product(*(range(sizes[n]) for n in others)):
        base = sum(c * strides[n] for c, n in zip(fixed, others))
        members = [base + sum(c * strides[n] for c, n in zip(coords, dims))
                   for coords in itertools.product(*(range(sizes[n]) for n in dims))]
        best = max(np.bincount(np.array(members) // domain))
        worst = best if worst is None else min(worst, best)
    return int(worst)


def test_default_order_tp8_cp2_dp4_pp2():
    p = dense_placement(8, 2, 4, 2, domain_gpus=8)
    assert int(p["tp"].ranks_per_domain) == 8 and int(p["tp"].stride) == 1 and int(p["tp"].domains_spanned) == 1
    assert int(p["cp"].stride) == 8 and int(p["cp"].ranks_per_domain) == 1 and int(p["cp"].domains_spanned) == 2
    assert int(p["dp"].stride) == 16 and int(p["dp"].ranks_per_domain) == 1 and int(p["dp"].domains_spanned) == 4
    assert int(p["pp"].stride) == 64 and int(p["pp"].ranks_per_domain) == 1
    assert int(p["dp_cp"].size) == 8 and int(p["dp_cp"].ranks_per_domain) == 1 and int(p["dp_cp"].stride) == 8


def test_partial_domains_match_brute_force():
    sizes = dict(tp=2, cp=2, ep=1, dp=4, pp=2)
    p = dense_placement(2, 2, 4, 2, domain_gpus=8)
    expected = {"tp": 2, "cp": 2, "dp": 2, "pp": 1}
    for dim, value in expected.items():
        assert int(p[dim].ranks_per_domain) == value == brute_force(sizes, DEFAULT_RANK_ORDER, (dim,), 8)
    assert int(p["dp_cp"].ranks_per_domain) == 4 == brute_force(sizes, DEFAULT_RANK_ORDER, ("dp", "cp"), 8)


def test_custom_order_puts_dp_innermost():
    order = "dp-tp-cp-ep-pp"
    p = dense_placement(2, 1, 4, 2, domain_gpus=8, order=order)
    assert int(p["dp"].stride) == 1 and int(p["dp"].ranks_per_domain) == 4
    assert int(p["tp"].stride) == 4 and int(p["tp"].ranks_per_domain) == 2
    assert int(p["pp"].stride) == 8 and int(p["pp"].ranks_per_domain) == 1
    sizes = dict(tp=2, cp=1, ep=1, dp=4, pp=2)
    assert brute_force(sizes, order, ("tp",), 8) == 2


@pytest.mark.parametrize("tp,cp,dp,pp,domain", [(4, 2, 9, 2, 72), (8, 1, 9, 2, 72), (2, 4, 8, 1, 8), (1, 1, 16, 4, 8)])
def test_exact_when_sizes_divide(tp, cp, dp, pp, domain):
    sizes = dict(tp=tp, cp=cp, ep=1, dp=dp, pp=pp)
    p = dense_placement(tp, cp, dp, pp, domain_gpus=domain)
    for dim in ("tp", "cp", "dp", "pp"):
        assert int(p[dim].ranks_per_domain) == brute_force(sizes, DEFAULT_RANK_ORDER, (dim,), domain), dim


def test_non_dividing_case_is_a_guaranteed_lower_bound():
    # tp=16 on 72-GPU domains over 144 GPUs: group 4 straddles ranks 64..79 -> 8 + 8.
    sizes = dict(tp=16, cp=1, ep=1, dp=9, pp=1)
    p = dense_placement(16, 1, 9, 1, domain_gpus=72)
    assert int(p["tp"].ranks_per_domain) == 8 == brute_force(sizes, DEFAULT_RANK_ORDER, ("tp",), 72)


def test_vectorised_over_layouts():
    tp = np.array([1, 2, 4, 8, 16])
    p = dense_placement(tp, 1, 64 // tp, 2, domain_gpus=8)
    np.testing.assert_array_equal(p["tp"].ranks_per_domain, [1, 2, 4, 8, 8])
    np.testing.assert_array_equal(p["tp"].domains_spanned, [1, 1, 1, 1, 2])
    np.testing.assert_array_equal(p["dp"].ranks_per_domain, [8, 4, 2, 1, 1])


def test_expert_mesh_folding():
    p = expert_placement(1, 8, 2, 1, domain_gpus=8)
    assert int(p["ep"].stride) == 1 and int(p["ep"].ranks_per_domain) == 8
    assert int(p["edp"].stride) == 8 and int(p["edp"].ranks_per_domain) == 1
    p = expert_placement(2, 8, 1, 1, domain_gpus=8)
    assert int(p["ep"].stride) == 2 and int(p["ep"].ranks_per_domain) == 4 and int(p["ep"].domains_spanned) == 2


def test_parse_rank_order():
    assert parse_rank_order("TP-CP-EP-DP-PP") == ("tp", "cp", "ep", "dp", "pp")
    for bad, why in [("tp-cp-dp-pp", "missing ep"), ("tp-tp-cp-dp-pp", "repeated tp"), ("tp-cp-ep-dp-xx", "unknown 'xx'")]:
        with pytest.raises(InputError, match=why) as info:
            parse_rank_order(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError):
        dense_placement(8, 1, 1, 1, domain_gpus=8, order="pp-dp")
    with pytest.raises(InputError, match="tp"):
        dense_placement(0, 1, 1, 1, domain_gpus=8)
