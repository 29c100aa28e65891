"""`plan-search hardware list|show` through typer's CliRunner."""

import pytest
from typer.testing import CliRunner

from hardware import InputError
from hardware.cli import app

runner = CliRunner()


def test_list_prints_presets_with_units():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for text in ("memory GiB", "HBM TB/s", "BF16 TFLOP/s", "FP8 TFLOP/s", "scale-up GB/s", "NICs x Gb/s", "TDP W"):
        assert text in result.output
    for name in ("h100-sxm", "gb200-nvl72", "mi300x"):
        assert name in result.output
    assert "79.1" in result.output and "8 x 400" in result.output


def test_show_cluster_prints_fields_units_and_derived_values():
    result = runner.invoke(app, ["show", "h100x1024"])
    assert result.exit_code == 0, result.output
    assert "1,024" in result.output and "128" in result.output  # total GPUs and nodes
    assert "scale-out per GPU" in result.output and "50.0" in result.output
    assert "GB/s per NIC per direction" in result.output and "400 Gb/s" in result.output
    assert "topology.scaleout_efficiency.all_to_all" in result.output


def test_show_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("gpu: h100-sxm\ntopology: {num_nodes: 2, nic_gbps: 200}\n")
    result = runner.invoke(app, ["show", str(path)])
    assert result.exit_code == 0, result.output
    assert "25.0 (= 200 Gb/s)" in result.output and "16" in result.output


def test_show_unknown_raises_input_error():
    result = runner.invoke(app, ["show", "h100x10O"])
    assert isinstance(result.exception, InputError)
    assert "unknown hardware preset" in str(result.exception)
