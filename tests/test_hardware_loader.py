"""Presets, cluster files and the one-line errors users see."""

import textwrap
import warnings

import pytest

from hardware import ClusterSpec, InputError, list_presets, load_cluster
from hardware.preset_catalog import gpu_preset_names
from hardware.schema import tiling_domain_gpus


def write(tmp_path, text, name="cluster.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def one_line_error(source) -> str:
    with pytest.raises(InputError) as info:
        load_cluster(source)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_cluster_presets_parse_any_gpu_count():
    h100 = load_cluster("h100x1024")
    assert h100.num_gpus == 1024 and h100.topology.num_nodes == 128
    assert h100.topology.nic_GBps == 50.0  # 400 Gb/s / 8
    assert h100.topology.scaleout_GBps_per_gpu == 50.0
    assert load_cluster("h100x24").topology.num_nodes == 3  # not in any list: parsed
    gb = load_cluster("gb200x144")
    assert (gb.topology.gpus_per_node, gb.topology.num_nodes, gb.topology.scaleup_domain_gpus) == (4, 36, 72)
    mi = load_cluster("mi300xx64")
    assert mi.topology.scaleup_kind == "mesh" and mi.num_gpus == 64
    assert load_cluster("h100-sxm").num_gpus == 8  # a GPU preset is one node
    assert load_cluster("a100x16").topology.scaleout_GBps_per_gpu == 25.0  # 8 x HDR 200 Gb/s / 8 GPUs


def test_preset_values_are_dense_datasheet_figures():
    h100 = load_cluster("h100-sxm").gpu
    assert (h100.peak_tflops_bf16, h100.peak_tflops_fp8, h100.hbm_GBps) == (989, 1979, 3350)
    # Usable memory: 81,559 MiB reported by nvidia-smi, minus 0.5 GiB of CUDA context.
    assert h100.memory_gib == pytest.approx(81559 / 1024 - 0.5, abs=0.06)
    assert load_cluster("h800-sxm").topology.scaleup_GBps == 200  # 400 GB/s bidirectional
    assert load_cluster("a100-sxm-80gb").gpu.peak_tflops_fp8 is None
    assert load_cluster("mi300x").gpu.peak_tflops_bf16 == pytest.approx(1307.4)


def test_list_presets():
    names = list_presets()
    assert set(gpu_preset_names()) == {"a100-sxm-80gb", "h100-sxm", "h800-sxm", "h200-sxm", "b200", "b300", "gb200-nvl72", "gb300-nvl72",
                                        "mi300x"}
    assert "h100x1024" in names and "gb200x72" in names and "mi300xx64" in names
    for name in names:
        assert isinstance(load_cluster(name), ClusterSpec)


def test_every_preset_value_has_a_source_comment():
    from importlib import resources
    for entry in (resources.files("hardware") / "presets").iterdir():
        for line in entry.read_text().splitlines():
            stripped = line.strip()
            if ":" in stripped and not stripped.startswith("#") and not stripped.endswith(":"):
                assert "#" in stripped, f"{entry.name}: '{stripped}' has no source comment"


def test_cluster_file_with_gpu_preset_and_overrides(tmp_path):
    path = write(tmp_path, """
        name: my-h100-cluster
        gpu: {preset: h100-sxm, memory_gib: 75}
        topology:
          num_nodes: 16
          nic_gbps: 200
          scaleup_efficiency: {all_to_all: 0.4}
        economics:
          price_per_gpu_hour_usd: 2.49
    """)
    spec = load_cluster(path)
    assert spec.name == "my-h100-cluster" and spec.num_gpus == 128
    assert spec.gpu.memory_gib == 75 and spec.gpu.peak_tflops_bf16 == 989
    assert spec.topology.nic_GBps == 25.0
    assert spec.topology.scaleup_efficiency.all_to_all == 0.4
    assert spec.topology.scaleup_efficiency.all_reduce == 0.82  # merged, not reset
    assert spec.economics.price_per_gpu_hour_usd == 2.49 and spec.economics.power_per_gpu_w == 1275


def test_top_level_preset_with_overrides(tmp_path):
    spec = load_cluster(write(tmp_path, "preset: h100x1024\ntopology: {scaleout_oversubscription: 2}\n"))
    assert spec.num_gpus == 1024 and spec.topology.scaleout_GBps_per_gpu == 25.0


def test_with_overrides_revalidates():
    base = load_cluster("h100x1024")
    spec = base.with_overrides({"topology.num_nodes": 64, "topology.nic_gbps": 200, "gpu.memory_gib": 75,
                                "economics.price_per_gpu_hour_usd": 2.5})
    assert (spec.num_gpus, spec.topology.nic_GBps, spec.gpu.memory_gib) == (512, 25.0, 75)
    assert spec.economics.price_per_gpu_hour_usd == 2.5 and base.num_gpus == 1024
    with pytest.raises(InputError, match=r"topology\.num_node: unknown field \(did you mean 'topology\.num_nodes'"):
        base.with_overrides({"topology.num_node": 3})
    with pytest.raises(InputError, match=r"topology\.num_nodes: must be greater than 0"):
        base.with_overrides({"topology.num_nodes": 0})


def test_missing_field(tmp_path):
    message = one_line_error(write(tmp_path, "gpu: h100-sxm\ntopology: {nic_gbps: 400}\n"))
    assert message.startswith(f"{tmp_path / 'cluster.yaml'}: topology.num_nodes: is required")


@pytest.mark.parametrize("field,value", [("nic_GBps", 0), ("nic_GBps", -5), ("scaleup_GBps", 0), ("scaleout_latency_us", -1)])
def test_zero_or_negative_bandwidth(tmp_path, field, value):
    message = one_line_error(write(tmp_path, f"gpu: h100-sxm\ntopology: {{num_nodes: 2, {field}: {value}}}\n"))
    assert f"cluster.yaml: topology.{field}: must be greater than 0" in message


def test_unknown_preset_suggests(tmp_path):
    assert "did you mean 'h100x1024'" in one_line_error("h10x1024")
    assert "did you mean 'mi300xx64'" in one_line_error("mi300x64")
    message = one_line_error(write(tmp_path, "gpu: h100-sxmm\ntopology: {num_nodes: 2}\n"))
    assert "cluster.yaml: gpu: h100-sxmm: unknown hardware preset (did you mean 'h100-sxm'?)" in message


def test_unknown_field_suggests(tmp_path):
    message = one_line_error(write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 2, nic_GBs: 50}\n"))
    assert "cluster.yaml: topology.nic_GBs: unknown field (did you mean" in message


def test_node_count_not_whole(tmp_path):
    message = one_line_error(write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 4.5}\n"))
    assert "cluster.yaml: topology.num_nodes:" in message and "fractional" in message
    assert "not a whole number of 8-GPU" in one_line_error("h100x100")


def test_yaml_not_a_mapping_and_missing_file(tmp_path):
    assert "must be a mapping" in one_line_error(write(tmp_path, "- h100-sxm\n"))
    assert "file not found" in one_line_error(tmp_path / "nope.yaml")
    message = one_line_error(write(tmp_path, "gpu: h100-sxm\ntopology: 8\n"))
    assert "cluster.yaml: topology: must be a mapping" in message


def test_domain_must_tile_nodes(tmp_path):
    message = one_line_error(write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 2, scaleup_domain_gpus: 12}\n"))
    assert "cluster.yaml: topology:" in message and "multiple of gpus_per_node" in message


def test_partial_racks_are_laid_out_in_whole_node_slices():
    # 256 GB200 GPUs (NVIDIA's DGX Cloud runs) fill no whole number of 72-GPU racks: 16 trays in each of
    # 4 racks; 100 GPUs (25 trays): 5 trays (20 GPUs) in each of 5 racks; whole racks stay whole.
    with pytest.warns(UserWarning, match="256 GPUs do not fill whole 72-GPU scale-up domains.*64-GPU slices"):
        assert load_cluster("gb200x256").topology.domain_gpus == 64
    with pytest.warns(UserWarning, match="20-GPU slices"):
        assert load_cluster("gb200x100").topology.domain_gpus == 20
    assert load_cluster("gb200x144").topology.domain_gpus == 72
    assert load_cluster("gb200x8").topology.domain_gpus == 8
    assert tiling_domain_gpus(16, 2, 8) == 2  # PCIe pairs inside a node keep their domain
    assert tiling_domain_gpus(24, 8, 8) == 8 and tiling_domain_gpus(4, 8, 8) == 4


def test_gbps_typed_into_GBps_warns(tmp_path):
    path = write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 2, nic_GBps: 400}\n")
    with pytest.warns(UserWarning, match="nic_gbps: 400"):
        spec = load_cluster(path)
    assert spec.topology.nic_GBps == 400  # warned, not silently changed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_cluster(write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 2, nic_GBps: 50}\n", "ok.yaml"))


def test_both_nic_units_rejected(tmp_path):
    message = one_line_error(write(tmp_path, "gpu: h100-sxm\ntopology: {num_nodes: 2, nic_GBps: 50, nic_gbps: 400}\n"))
    assert "cluster.yaml: topology:" in message and "not both" in message


def test_gb300_is_a_gb200_rack_with_more_memory_and_faster_nics():
    """Blackwell Ultra keeps GB200's dense FP8/BF16 peaks and NVL72 fabric, with 288 GB HBM and 800G NICs."""
    gb200, gb300 = load_cluster("gb200x144"), load_cluster("gb300x144")
    assert (gb300.gpu.peak_tflops_fp8, gb300.gpu.peak_tflops_bf16) == (gb200.gpu.peak_tflops_fp8, gb200.gpu.peak_tflops_bf16)
    assert gb300.topology.scaleup_domain_gpus == 72 and gb300.topology.num_nodes == 36
    assert gb300.gpu.memory_gib > 1.5 * gb200.gpu.memory_gib
    assert gb300.topology.nic_GBps == 2 * gb200.topology.nic_GBps == 100.0


def test_b300_is_an_hgx_node_with_b200_peaks_and_800g_nics():
    """HGX B300: the same dense BF16/FP8 peaks per GPU as HGX B200 (36 / 72 PFLOPS sparse per 8 GPUs),
    8 GPUs per NVLink domain, one 800 Gb/s ConnectX-8 per GPU, about 1.5x B200's memory."""
    b200, b300 = load_cluster("b200x64"), load_cluster("b300x64")
    assert (b300.gpu.peak_tflops_bf16, b300.gpu.peak_tflops_fp8) == (2250, 4500)
    assert (b300.gpu.peak_tflops_bf16, b300.gpu.peak_tflops_fp8) == (b200.gpu.peak_tflops_bf16, b200.gpu.peak_tflops_fp8)
    assert b300.topology.scaleup_domain_gpus == 8 and b300.topology.nic_GBps == 2 * b200.topology.nic_GBps == 100.0
    assert b300.gpu.memory_gib == pytest.approx(275040 / 1024 - 0.5, abs=0.06)
