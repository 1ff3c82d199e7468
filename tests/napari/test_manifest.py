"""The plugin manifest is valid for npe2 and lists every contribution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
MANIFEST = Path(__file__).resolve().parents[2] / "napari_plugin" / "napari.yaml"


def test_npe2_validate_accepts_the_manifest_and_its_imports():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(MANIFEST)
    pm.validate_imports()  # every python_name imports and exists
    names = {c.id for c in pm.contributions.commands}
    assert {"medseg.get_reader", "medseg.write_labels_nifti", "medseg.write_labels_dicom_seg",
            "medseg.segment_widget", "medseg.enhance_widget", "medseg.metrics_widget", "medseg.review_widget"} <= names
    assert {s.key for s in pm.contributions.sample_data} == {"ct_small", "ct_dicom"}
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_a_broken_manifest_is_refused(tmp_path):
    from npe2 import PluginManifest

    bad = tmp_path / "napari.yaml"
    bad.write_text(MANIFEST.read_text().replace("napari_plugin._widget:SegmentWidget", "napari_plugin._widget:NoSuchWidget"))
    with pytest.raises(Exception):
        PluginManifest.from_file(bad).validate_imports()
