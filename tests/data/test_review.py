"""medseg.data.review: review queues from case folders, the review file, training cases."""

from __future__ import annotations

import shutil

import pytest

from medseg import sample_data
from medseg.data.review import open_review_queue, read_review_file, review_training_cases
from medseg.errors import InputError
from medseg.io import load_volume


@pytest.fixture
def folder(tmp_path):
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).mkdir()
    for name in ("b", "a"):
        shutil.copy(sample_data.path("ct_small"), tmp_path / "imagesTr" / f"{name}_0000.nii.gz")
        shutil.copy(sample_data.path("ct_small_seg"), tmp_path / "labelsTr" / f"{name}.nii.gz")
    return tmp_path


def test_folder_queue_status_corrections_and_training_cases(folder):
    queue = open_review_queue(folder)
    assert [c.name for c in queue.cases] == ["a", "b"]
    assert review_training_cases(queue.review_file) == []  # nothing accepted yet
    labels = load_volume(queue.cases[1].labels)
    edited = labels.with_array((labels.array == 5).astype("uint8"))
    path = queue.save_correction(1, edited)
    queue.set_status(1, "accepted", "liver only")
    queue.set_status(0, "needs_fix", "")
    cases = review_training_cases(queue.review_file)
    assert cases == [{"image": queue.cases[1].image, "label": str(path), "name": "review:b"}]
    assert load_volume(path).same_grid(labels)
    again = open_review_queue(folder)  # resumes
    assert [(c.status, c.comment) for c in again.cases] == [("needs_fix", ""), ("accepted", "liver only")]
    with pytest.raises(ValueError, match="status"):
        queue.set_status(0, "done")


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(InputError, match="images/"):
        open_review_queue(tmp_path)
    (tmp_path / "review.json").write_text("{}")
    with pytest.raises(InputError, match="review.json"):
        read_review_file(tmp_path / "review.json")
