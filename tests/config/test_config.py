"""Workflow configuration: validation, error messages, overrides, path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medseg.config import WORKFLOW_VARIANTS, describe_config, load_workflow, parse_override
from medseg.errors import ConfigError

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"

MINIMAL = {
    "name": "t",
    "data": {"training": [{"image": "sample:ct_small", "label": "sample:ct_small_seg"}], "labels": {"liver": 5}},
    "preprocessing": {"modality": "CT"},
}


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "w.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("name", ["smoke.yaml", "abdomen_ct_organs.yaml", "brain_tumor_mri.yaml"])
def test_bundled_workflows_validate_and_resolve_sample_paths(name):
    cfg = load_workflow(WORKFLOWS / name)
    for case in cfg.data.training + cfg.data.validation:
        assert Path(case.image).exists(), case.image
        assert Path(case.label).exists(), case.label


def test_misspelled_key_lists_valid_keys_and_suggests(tmp_path):
    raw = {**MINIMAL, "training": {"epoch": 3}}
    with pytest.raises(ConfigError) as exc:
        load_workflow(_write(tmp_path, raw))
    msg = str(exc.value)
    assert "training.epoch: unknown key" in msg
    assert "did you mean 'epochs'" in msg
    assert "steps_per_epoch" in msg and "patch_size" in msg  # the valid keys are listed


def test_unknown_top_level_and_nested_list_keys(tmp_path):
    raw = {**MINIMAL, "modle": {}}
    raw["data"] = {**MINIMAL["data"], "training": [{"image": "sample:ct_small", "lable": "x"}]}
    with pytest.raises(ConfigError) as exc:
        load_workflow(_write(tmp_path, raw))
    msg = str(exc.value)
    assert "modle: unknown key (did you mean 'model'?)" in msg
    assert "data.training.0.lable: unknown key (did you mean 'label'?)" in msg


def test_wrong_type_and_missing_required(tmp_path):
    raw = {"name": "t", "data": MINIMAL["data"], "training": {"epochs": "many"}}
    with pytest.raises(ConfigError) as exc:
        load_workflow(_write(tmp_path, raw))
    assert "preprocessing: required key is missing" in str(exc.value)
    assert "training.epochs" in str(exc.value)


def test_label_mapping_errors():
    with pytest.raises(ConfigError, match="given to both"):
        load_workflow({**MINIMAL, "data": {**MINIMAL["data"], "labels": {"a": 5, "b": [5, 6]}}})
    with pytest.raises(ConfigError, match="must be > 0"):
        load_workflow({**MINIMAL, "data": {**MINIMAL["data"], "labels": {"a": 0}}})


def test_overrides_parse_yaml_values_and_apply(tmp_path):
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("training.patch_size=[32, 32, 16]") == (["training", "patch_size"], [32, 32, 16])
    cfg = load_workflow(_write(tmp_path, MINIMAL), ["training.epochs=7", "optim.encoder_lr=0.0001", "model.encoder=resnet34"])
    assert cfg.training.epochs == 7 and cfg.optim.encoder_lr == 1e-4 and cfg.model.encoder == "resnet34"


def test_override_of_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_workflow(_write(tmp_path, MINIMAL), ["optim.learning_rate=1"])
    assert "--set optim.learning_rate=1" in str(exc.value) and "valid keys here" in str(exc.value)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_workflow(_write(tmp_path, MINIMAL), ["optim.lr"])


def test_relative_paths_resolve_against_the_workflow_file(tmp_path):
    (tmp_path / "d").mkdir()
    raw = {**MINIMAL, "data": {"training": [{"image": "d/img.nii.gz", "label": "d/lab.nii.gz"}], "labels": {"x": 1}}}
    cfg = load_workflow(_write(tmp_path, raw))
    assert cfg.data.training[0].image == str(tmp_path / "d" / "img.nii.gz")


def test_unknown_sample_name():
    raw = {**MINIMAL, "data": {**MINIMAL["data"], "training": [{"image": "sample:nope", "label": "sample:ct_small_seg"}]}}
    with pytest.raises(ConfigError, match="unknown sample 'nope'"):
        load_workflow(raw)


def test_every_field_is_documented():
    from pydantic import BaseModel

    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            for t in (ann, *getattr(ann, "__args__", ())):
                if isinstance(t, type) and issubclass(t, BaseModel) and t is not model:
                    walk(t)

    for variant in WORKFLOW_VARIANTS.values():
        walk(variant)


def test_val_largest_component_must_name_classes():
    cfg = load_workflow({**MINIMAL, "training": {"val_largest_component": ["liver"]}})
    assert cfg.training.val_largest_component == ["liver"]
    with pytest.raises(ConfigError, match=r"not classes of data.labels \(classes: \['liver'\]\)"):
        load_workflow({**MINIMAL, "training": {"val_largest_component": ["livre"]}})


DENOISING = {
    "name": "d", "task": "denoising",
    "data": {"training": [{"image": "sample:ct_small"}], "validation": [{"image": "sample:ct"}]},
    "preprocessing": {"modality": "CT"},
}


def test_task_selects_the_variant_and_segmentation_is_the_default():
    seg = load_workflow(MINIMAL)
    assert seg.task == "segmentation" and seg.data.labels == {"liver": 5} and seg.training.patch_size == [96, 96, 64]
    den = load_workflow(DENOISING)
    assert den.task == "denoising" and not hasattr(den.data, "labels")  # labels are a segmentation key
    assert den.preprocessing.plan()["intensity"] == {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}
    assert den.training.precision == "auto" and not hasattr(den.training, "pos_fraction")
    # an image-only workflow needs no labels: switching a labelled workflow's task must name the seg-only keys
    with pytest.raises(ConfigError) as exc:
        load_workflow(MINIMAL, ["task=denoising"])
    assert "data.labels: unknown key" in str(exc.value)


def test_wrong_task_name_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_workflow(_write(tmp_path, {**DENOISING, "task": "denoisng"}))
    msg = str(exc.value)
    assert "unknown task 'denoisng' (did you mean 'denoising'?)" in msg and "segmentation, denoising" in msg


def test_misspelled_key_in_the_denoising_variant_suggests(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_workflow(_write(tmp_path, {**DENOISING, "noise": {"modle": "rician"}}))
    msg = str(exc.value)
    assert "noise.modle: unknown key (did you mean 'model'?)" in msg and "dose_range" in msg
    cfg = load_workflow(_write(tmp_path, DENOISING), ["noise.model=rician", "model.context_slices=2", "training.precision=bf16"])
    assert cfg.noise.model == "rician" and cfg.model.build_dict()["in_channels"] == 5 and cfg.training.precision == "bf16"
    assert cfg.noise.validation_levels() == [0.01, 0.055, 0.1]
    with pytest.raises(ConfigError, match="ct_dose simulates CT dose: it needs preprocessing.modality CT"):
        load_workflow(DENOISING, ["noise.model=ct_dose", "preprocessing.modality=MR"])
    with pytest.raises(ConfigError, match="patch_size .* has 3 sizes but model.spatial_dims is 2"):
        load_workflow(DENOISING, ["training.patch_size=[32,32,16]"])


def test_help_config_lists_every_variant():
    text = describe_config()
    assert "== task: segmentation (the default)" in text and "== task: denoising" in text
    den = describe_config("denoising")
    assert "noise.model (default 'gaussian')" in den and "data.labels" not in den and "training.precision (default 'auto')" in den
    assert "training.pos_fraction" in describe_config("segmentation")
    with pytest.raises(ConfigError, match="did you mean 'segmentation'"):
        describe_config("segmentaton")


def test_legacy_amp_maps_to_precision():
    assert load_workflow({**MINIMAL, "training": {"amp": False}}).training.precision == "fp32"
    assert load_workflow({**MINIMAL, "training": {"amp": True}}).training.precision == "auto"
    with pytest.raises(ConfigError, match="give 'precision' only"):
        load_workflow({**MINIMAL, "training": {"amp": True, "precision": "bf16"}})


@pytest.mark.parametrize("name", ["denoise_ct.yaml", "denoise_mr.yaml"])
def test_bundled_denoising_workflows_validate(name):
    cfg = load_workflow(WORKFLOWS / name)
    assert cfg.task == "denoising"
    for case in cfg.data.training + cfg.data.validation:
        assert Path(case.image).exists(), case.image
    assert not {c.image for c in cfg.data.training} & {c.image for c in cfg.data.validation}  # validated on other scans
