"""Collective time model: hand-computed times and published nccl-tests figures."""

import numpy as np
import pytest

from hardware import Collective, InputError, bus_bandwidth_GBps, collective_time_s, dense_placement, load_cluster

GiB = 2**30


@pytest.fixture(scope="module")
def h100():
    return load_cluster("h100x128").topology


def test_ring_all_reduce_1gib_inside_node_by_hand(h100):
    topo = load_cluster("h100x128").with_overrides({"topology.nvls": False}).topology
    # Ring: 2(n-1) steps of 2 us, and each rank sends 2(n-1)/n * M at 450 GB/s * 0.82.
    ring = 2 * 7 * 2e-6 + 2 * (7 / 8) * GiB / (450e9 * 0.82)
    assert ring == pytest.approx(0.005120, rel=1e-3)  # the hand arithmetic itself
    got = collective_time_s(topo, Collective.ALL_REDUCE, 8, GiB, 8)
    assert float(got) == pytest.approx(ring, rel=1e-12)


def test_nvls_all_reduce_1gib_by_hand(h100):
    # NVLS: two latency steps plus (n-1)/n * M at 450 GB/s * 0.53, faster than the ring.
    nvls = 2 * 2e-6 + (7 / 8) * GiB / (450e9 * 0.53)
    assert float(collective_time_s(h100, "all_reduce", 8, GiB, 8)) == pytest.approx(nvls, rel=1e-12)


def test_8xh100_all_reduce_busbw_matches_nccl_tests(h100):
    # nccl-tests#212: ring ~370 GB/s busbw, NVLS ~480 GB/s for large messages (8 GiB here).
    m = 8 * GiB
    ring_topo = load_cluster("h100x128").with_overrides({"topology.nvls": False}).topology
    ring_bw = bus_bandwidth_GBps("all_reduce", 8, m, collective_time_s(ring_topo, "all_reduce", 8, m, 8))
    nvls_bw = bus_bandwidth_GBps("all_reduce", 8, m, collective_time_s(h100, "all_reduce", 8, m, 8))
    assert float(ring_bw) == pytest.approx(370, rel=0.15)
    assert float(nvls_bw) == pytest.approx(480, rel=0.15)
    ag_bw = bus_bandwidth_GBps("all_gather", 8, m, collective_time_s(h100, "all_gather", 8, m, 8))
    assert float(ag_bw) == pytest.approx(370, rel=0.15)


def test_h800_nvls_busbw_matches_published_215():
    topo = load_cluster("h800x16").topology  # NVIDIA/nccl#1374: 215 GB/s
    m = 8 * GiB
    bw = bus_bandwidth_GBps("all_reduce", 8, m, collective_time_s(topo, "all_reduce", 8, m, 8))
    assert float(bw) == pytest.approx(215, rel=0.15)


def test_one_rank_per_node_gets_one_ndr_nic(h100):
    # nccl-tests#290: 46-48 GB/s achieved per 400 Gb/s NDR NIC; 16 nodes, one rank each.
    m = 8 * GiB
    for kind in ("all_reduce", "all_gather", "reduce_scatter"):
        bw = float(bus_bandwidth_GBps(kind, 16, m, collective_time_s(h100, kind, 16, m, 1)))
        assert 46 * 0.85 <= bw <= 48 * 1.15, kind
        assert bw == pytest.approx(47, abs=1.5)


def test_group_spanning_nodes_is_slower(h100):
    m = 256 * 2**20
    inside = collective_time_s(h100, "all_reduce", 8, m, 8)
    half = collective_time_s(h100, "all_reduce", 8, m, 4)
    spread = collective_time_s(h100, "all_reduce", 8, m, 1)
    assert inside < half < spread
    assert float(spread / inside) > 5  # 47 GB/s NIC share vs 480 GB/s NVLS


def test_nvl72_keeps_16_way_group_on_nvlink():
    gb200 = load_cluster("gb200x72")
    placement = dense_placement(16, 1, 4, 1, domain_gpus=gb200.topology.scaleup_domain_gpus)
    tp = placement["tp"]
    assert int(tp.ranks_per_domain) == 16 and int(tp.domains_spanned) == 1
    on_nvlink = collective_time_s(gb200.topology, "all_gather", 16, GiB, tp.ranks_per_domain)
    # Same 16-way group on 8-GPU HGX B200 nodes (same 900 GB/s NVLink) must cross the network.
    hgx = load_cluster("b200x64")
    hgx_tp = dense_placement(16, 1, 4, 1, domain_gpus=8)["tp"]
    assert int(hgx_tp.ranks_per_domain) == 8
    crossing = collective_time_s(hgx.topology, "all_gather", 16, GiB, hgx_tp.ranks_per_domain)
    # By hand: NVL72 = 15 steps x 2.5 us + 15/16 GiB at 900 GB/s x 0.82.
    assert float(on_nvlink) == pytest.approx(15 * 2.5e-6 + 15 / 16 * GiB / (900e9 * 0.82), rel=1e-12)
    # HGX by hand: one flat ring of 16 ranks, 15 steps: 14 over NVLink and 1 over the network (NCCL
    # tuning.cc); the network stage carries (d-1)/d * M/g = M/16 per rank at 50 GB/s x 0.94 and is the
    # slower of the two pipelined stages.
    by_hand = 14 * 2e-6 + 1 * 5e-6 + max(7 / 8 * GiB / (900e9 * 0.82), GiB / 16 / (50e9 * 0.94))
    assert float(crossing) == pytest.approx(by_hand, rel=1e-12)
    assert float(crossing) > float(on_nvlink)


def test_mi300x_mesh_link_count():
    topo = load_cluster("mi300xx8").topology
    m = GiB
    # 2 ranks use one 64 GB/s link; 8 ranks use 7 links (all-gather at 0.7 efficiency, 2 us per step).
    two = 1 * 2e-6 + (1 / 2) * m / (1 * 64e9 * 0.7)
    eight = 7 * 2e-6 + (7 / 8) * m / (7 * 64e9 * 0.7)
    assert float(collective_time_s(topo, "all_gather", 2, m, 2)) == pytest.approx(two, rel=1e-12)
    assert float(collective_time_s(topo, "all_gather", 8, m, 8)) == pytest.approx(eight, rel=1e-12)
    # Per-rank bandwidth: one link vs seven.
    bw2 = bus_bandwidth_GBps("all_gather", 2, m, two)
    bw8 = bus_bandwidth_GBps("all_gather", 8, m, eight)
    assert float(bw2) == pytest.approx(64 * 0.7, rel=0.01)
    assert float(bw8) == pytest.approx(7 * 64 * 0.7, rel=0.01)


def test_send_recv_inside_and_across(h100):
    m = 64 * 2**20
    inside = 2e-6 + m / (450e9 * 0.84)
    across = 5e-6 + m / (50e9 * 0.9)
    got = collective_time_s(h100, "send_recv", 2, m, np.array([2, 1]))
    np.testing.assert_allclose(got, [inside, across], rtol=1e-12)


def test_all_to_all_split_between_nvlink_and_network_by_hand(h100):
    # 64 ranks, 8 per node: 7/64 of the buffer over NVLink, 56/64 over the NIC share; the slower wins.
    m = GiB
    intra = 7 / 64 * m / (450e9 * 0.75)
    inter = 56 / 64 * m / (50e9 * 0.9)
    assert inter > intra
    assert float(collective_time_s(h100, "all_to_all", 64, m, 8)) == pytest.approx(5e-6 + inter, rel=1e-12)
    inside = float(collective_time_s(h100, "all_to_all", 8, m, 8))
    assert inside == pytest.approx(2e-6 + 7 / 8 * m / (450e9 * 0.75), rel=1e-12)


def test_all_to_all_across_nodes_runs_at_one_nic_per_gpu(h100):
    # nccl-tests#130 (NCCL maintainer): across N nodes the all-to-all busBw is N/(N-1) x the network
    # bandwidth per GPU, tending to one NIC (nccl-tests#267); an NDR NIC gives 46-48 GB/s (#290).
    m = GiB
    one_per_node = bus_bandwidth_GBps("all_to_all", 64, m, collective_time_s(h100, "all_to_all", 64, m, 1))
    assert float(one_per_node) == pytest.approx(47, rel=0.1)
    eight_nodes = bus_bandwidth_GBps("all_to_all", 64, m, collective_time_s(h100, "all_to_all", 64, m, 8))
    assert float(eight_nodes) == pytest.approx(8 / 7 * 47, rel=0.1)


def test_small_messages_use_tree_latency(h100):
    topo = load_cluster("h100x128").topology
    # 8 bytes over 64 ranks, one per node: ring needs 2*63 steps of 5 us, tree 2*log2(64)=12 steps.
    t = float(collective_time_s(topo, "all_reduce", 64, 8, 1))
    assert t == pytest.approx(12 * 5e-6, rel=1e-3)
    assert t < 2 * 63 * 5e-6


def test_broadcasting_and_trivial_groups(h100):
    sizes = np.array([1, 2, 4, 8])[:, None]
    msgs = np.array([0, 2**20, GiB])[None, :]
    t = collective_time_s(h100, "reduce_scatter", sizes, msgs, sizes)
    assert t.shape == (4, 3)
    assert np.all(t[0] == 0) and np.all(t[:, 0] == 0)
    assert np.all(np.diff(t[1:, 2]) > 0)  # bigger group, more steps, more of the buffer moved
    assert float(bus_bandwidth_GBps("all_reduce", 8, 2e9, 0.01)) == pytest.approx(2e9 / 0.01 / 1e9 * 2 * 7 / 8)


def test_oversubscription_slows_the_network_only():
    base = load_cluster("h100x128")
    over = base.with_overrides({"topology.scaleout_oversubscription": 2.0})
    m = GiB
    assert float(collective_time_s(over.topology, "all_gather", 16, m, 1)) == pytest.approx(
        15 * 5e-6 + 15 / 16 * m / (25e9 * 0.94), rel=1e-12)
    assert float(collective_time_s(over.topology, "all_gather", 8, m, 8)) == float(
        collective_time_s(base.topology, "all_gather", 8, m, 8))


def test_bad_inputs_raise(h100):
    with pytest.raises(InputError, match="kind"):
        collective_time_s(h100, "broadcast", 8, 1, 8)
    with pytest.raises(InputError, match="ranks_per_domain"):
        collective_time_s(h100, "all_reduce", 8, 1, 16)
    with pytest.raises(InputError, match="scale-up domain"):
        collective_time_s(h100, "all_reduce", 32, 1, 16)


def test_ring_latency_grows_with_ranks_as_nccl_tuning(h100):
    # NCCL src/graph/tuning.cc: a ring all-gather over nRanks on nNodes pays (nRanks - nNodes) intra-node
    # steps and (nNodes - 1) network steps of latency. 1,536 ranks on 192 8-GPU nodes: 1,344 NVLink steps
    # of 2 us and 191 network steps of 5 us = 3.643 ms, for an 8-byte message (latency only).
    t = float(collective_time_s(h100, "all_gather", 1536, 8, 8))
    assert t == pytest.approx(1344 * 2e-6 + 191 * 5e-6, rel=1e-6)
    assert t == pytest.approx(3.643e-3, rel=1e-3)
    # Doubling the ranks at the same ranks per node doubles the latency (to within the one step less).
    t2 = float(collective_time_s(h100, "all_gather", 3072, 8, 8))
    assert t2 / t == pytest.approx(2.0, rel=2e-3)


def test_tree_all_reduce_latency_chains_inside_the_node():
    # NCCL tree latency 2 * ((ppn - 1) * intraLat + log2(nNodes) * interLat): 64 nodes x 8 ranks,
    # 8 bytes: 2 * (7 * 2 + 6 * 5) us = 88 us, below the ring's 2 * (448 * 2 + 63 * 5) us.
    topo = load_cluster("h100x512").with_overrides({"topology.nvls": False}).topology
    t = float(collective_time_s(topo, "all_reduce", 512, 8, 8))
    assert t == pytest.approx(2 * (7 * 2e-6 + 6 * 5e-6), rel=1e-6)
    assert t < 2 * (448 * 2e-6 + 63 * 5e-6)


def test_all_to_all_inside_a_node_matches_nccl_issue_2169(h100):
    # NVIDIA/nccl#2169: alltoall_perf on 4 H100 of one node, 524,288,000 bytes: busBw 335-338 GB/s.
    m = 524288000
    bw = bus_bandwidth_GBps("all_to_all", 4, m, collective_time_s(h100, "all_to_all", 4, m, 4))
    assert float(bw) == pytest.approx(336.5, rel=0.03)
