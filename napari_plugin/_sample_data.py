"""napari sample data: the real CT bundled with medseg (TotalSegmentator example, CC BY 4.0)."""

from __future__ import annotations

from medseg import sample_data
from medseg.io import load_volume

from napari_plugin._layers import LayerData, image_layer, labels_layer


def ct_small() -> list[LayerData]:
    """122×101×30 abdominal CT at 3 mm with its 117-structure TotalSegmentator labels."""
    names = sample_data.totalsegmentator_labels()
    image = load_volume(sample_data.path("ct_small"))
    labels = load_volume(sample_data.path("ct_small_seg"))
    return [image_layer(image, "ct_small"), labels_layer(labels, "ct_small labels", names)]


def ct_dicom() -> list[LayerData]:
    """The 20-slice 512×512 CT DICOM series with its labels (for DICOM SEG export)."""
    from medseg.io.dicom import read_dicom_series

    names = sample_data.totalsegmentator_labels()
    folder = sample_data.path("ct_dicom")
    image = read_dicom_series(folder)
    image.meta["source_path"] = str(folder)
    from medseg.data.datasets import align_to_grid

    seg_file = load_volume(sample_data.path("ct_dicom_seg"))
    labels = align_to_grid(seg_file, image)  # the same voxels as the series, stored in another order
    if labels is None:
        raise RuntimeError(f"{sample_data.path('ct_dicom_seg')}: not on the grid of {folder}")
    # the labels take the series' DICOM metadata, so the SEG writer can reference the series
    labels.meta = {**image.meta, "label_names": names}
    return [image_layer(image, "ct_dicom"), labels_layer(labels, "ct_dicom labels", names)]
