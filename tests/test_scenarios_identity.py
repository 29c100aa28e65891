"""The tool version names the code that priced a result, so a sweep never reuses a part priced by other code."""

import re
import sys

import pytest

from scenarios import identity


@pytest.fixture()
def fake_package(tmp_path, monkeypatch):
    """A package on sys.path whose files the fingerprint reads instead of plan-search's own."""
    root = tmp_path / "fake_pricing"
    (root / "presets").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "cost.py").write_text("RATE = 0.8\n")
    (root / "presets" / "gpu.yaml").write_text("peak_tflops: 989\n")
    (root / "NOTES.md").write_text("prose\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(identity, "FINGERPRINTED_PACKAGES", ("fake_pricing",))
    yield root
    sys.modules.pop("fake_pricing", None)


def test_fingerprint_is_stable_for_the_same_files(fake_package):
    assert identity.code_fingerprint() == identity.code_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{12}", identity.code_fingerprint())


def test_fingerprint_moves_with_code_and_data_but_not_prose_or_bytecode(fake_package):
    before = identity.code_fingerprint()
    (fake_package / "NOTES.md").write_text("other prose\n")
    (fake_package / "__pycache__").mkdir()
    (fake_package / "__pycache__" / "cost.cpython-311.pyc").write_bytes(b"\x00\x01")
    assert identity.code_fingerprint() == before
    (fake_package / "cost.py").write_text("RATE = 0.7\n")
    after_code = identity.code_fingerprint()
    assert after_code != before
    (fake_package / "presets" / "gpu.yaml").write_text("peak_tflops: 990\n")
    assert identity.code_fingerprint() not in (before, after_code)


def test_a_renamed_file_changes_the_fingerprint(fake_package):
    before = identity.code_fingerprint()
    (fake_package / "cost.py").rename(fake_package / "costs.py")
    assert identity.code_fingerprint() != before


def test_tool_version_carries_the_fingerprint_as_a_local_label():
    version = identity.tool_version()
    release, label = version.split("+")
    assert label == f"code.{identity.code_fingerprint()}"
    assert release
