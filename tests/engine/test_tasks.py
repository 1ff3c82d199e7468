"""Tasks on the one engine: denoising trains on real CT and writes an image-to-image checkpoint
that rebuilds; resume continues it exactly; a non-finite loss stops training with the step,
epoch and case named and no non-finite checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.engine import train
from medseg.engine.logs import read_epoch_log
from medseg.errors import TrainingError

SMOKE = Path(__file__).resolve().parents[2] / "workflows" / "smoke.yaml"

#: a small denoising run on the bundled CT: example_ct_sm for training, example_ct (another
#: acquisition of the field of view, 112 slices) for validation, 2.5-D patches of 32²
DENOISE = {
    "name": "denoise_test", "task": "denoising", "seed": 0,
    "data": {"training": [{"image": "sample:ct_small", "name": "example_ct_sm"}],
             "validation": [{"image": "sample:ct", "name": "example_ct"}]},
    "preprocessing": {"modality": "CT"},
    "noise": {"model": "gaussian", "sigma_range": [100, 150], "val_levels": [120]},
    "model": {"name": "unet_denoiser", "spatial_dims": 2, "context_slices": 1, "features": [8, 8, 16, 16, 32, 8]},
    "optim": {"lr": 0.01, "warmup_epochs": 0},
    "training": {"epochs": 3, "steps_per_epoch": 8, "batch_size": 1, "patches_per_case": 8, "patch_size": [32, 32],
                 "val_every": 3, "val_max_slices": 3, "torch_threads": 2},
    "output": {"tensorboard": False},
}


def _denoise(tmp_path: Path, *extra: str) -> list[str]:
    return [f"output.dir={tmp_path}", *extra]


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    return train(DENOISE, overrides=_denoise(tmp_path_factory.mktemp("denoise")), device="cpu")


@pytest.mark.slow
def test_denoising_learns_and_beats_its_noisy_input(denoise_run):
    rows = read_epoch_log(denoise_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    losses = [r["train_loss"] for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    last = rows[-1]
    # 120 HU of noise in a 4095-HU range: the noisy input's PSNR is 20·log10(4095/120) = 30.7 dB
    assert 30 < last["val_psnr_noisy_db"] < 31.5
    assert last["val_psnr_db"] > last["val_psnr_noisy_db"] + 1.0 and last["val_ssim"] > last["val_ssim_noisy"]
    cases = (denoise_run / "validation_cases.csv").read_text().splitlines()
    assert cases[0] == "epoch,case,noise,level,psnr_noisy_db,psnr_db,ssim_noisy,ssim" and "example_ct,gaussian,120.0" in cases[1]


@pytest.mark.slow
def test_denoising_checkpoint_follows_the_image_to_image_format(denoise_run):
    from medseg.data.intensity import from_network_units, intensity_params, to_network_units
    from medseg.io import read_volume
    from medseg import sample_data
    from medseg.models import build_model

    ckpt = load_checkpoint(denoise_run / "checkpoints" / "best.pt", expected_task="denoising")
    assert ckpt.labels == {} and ckpt.training_state is None
    assert ckpt.preprocessing == {"modality": "CT", "spacing_mm": None, "orientation": "RAS",
                                  "intensity": {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}}
    assert ckpt.inference == {"spatial_dims": 2, "context_slices": 1, "roi_size": None, "overlap": 0.25}
    assert ckpt.metrics["score"] == ckpt.metrics["val_psnr_db"]
    net = build_model(ckpt.model)
    net.load_state_dict(ckpt.state_dict)
    net.eval()
    # (B, 2k+1, H, W) in network units → (B, 1, H, W): on a real slice the output stays in HU's scale
    vol = read_volume(sample_data.path("ct_small")).array.astype(np.float32)
    params = intensity_params(vol, ckpt.preprocessing["intensity"])
    x = torch.from_numpy(to_network_units(vol[:, :, 10:13], params)).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = from_network_units(net(x), params)
    assert out.shape == (1, 1, *vol.shape[:2])
    # back in HU: a network-unit output (0…1) would differ by ~1000 HU; a short run on 120-HU noise smooths a little
    assert float((out[0, 0] - torch.from_numpy(vol[:, :, 11])).abs().median()) < 80


@pytest.mark.slow
def test_denoising_resume_continues_exactly(denoise_run, tmp_path):
    first = train(DENOISE, overrides=_denoise(tmp_path, "training.stop_after_epoch=1"), device="cpu")
    resumed = train(DENOISE, overrides=_denoise(tmp_path), device="cpu", resume=True)
    a = read_epoch_log(denoise_run / "metrics.csv")
    b = read_epoch_log(resumed / "metrics.csv")
    assert resumed == first and [int(r["epoch"]) for r in b] == [1, 2, 3]
    np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=1e-5)
    np.testing.assert_allclose(b[-1]["val_psnr_db"], a[-1]["val_psnr_db"], rtol=1e-6)


@pytest.mark.slow
def test_denoising_resumes_exactly_after_a_sigkill(denoise_run, tmp_path):
    """Kill -9 a real `medseg train` of the denoising workflow once its first epoch is logged
    (it is then in epoch 2 or saving it); ``--resume`` continues from whatever ``last.pt`` holds
    and ends with the uninterrupted run's losses, validation PSNR and weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    workflow = tmp_path / "denoise.yaml"
    workflow.write_text(yaml.safe_dump(DENOISE))
    run = tmp_path / "denoise_test"
    proc = subprocess.Popen(
        [sys.executable, "-m", "medseg", "train", str(workflow), "--device", "cpu", "--set", f"output.dir={tmp_path}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "2"},
    )
    deadline = time.monotonic() + 300  # a shared 2-core machine: start-up and caching can take a while
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.csv").is_file() and len((run / "metrics.csv").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    killed_mid_run = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed_mid_run, "the training ended before it could be killed"
    killed_at = load_checkpoint(run / "checkpoints" / "last.pt").training_state["epoch"] + 1
    assert 1 <= killed_at < 3

    resumed = train(DENOISE, overrides=_denoise(tmp_path), device="cpu", resume=True)
    assert resumed == run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # a cut save's temp file is gone
    a = read_epoch_log(denoise_run / "metrics.csv")
    b = read_epoch_log(run / "metrics.csv")
    assert [int(r["epoch"]) for r in b] == [1, 2, 3]
    np.testing.assert_allclose([r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=1e-5)
    np.testing.assert_allclose(b[-1]["val_psnr_db"], a[-1]["val_psnr_db"], rtol=1e-6)
    wa = load_checkpoint(denoise_run / "checkpoints" / "last.pt").state_dict
    wb = load_checkpoint(run / "checkpoints" / "last.pt").state_dict
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)


def test_non_finite_loss_names_step_epoch_and_case_and_writes_no_checkpoint(tmp_path, monkeypatch, capfd):
    """NaN voxels injected after loading (the readers repair NaN in files): exit 1, a clear
    message, and no best.pt/last.pt at all."""
    import medseg.data.datasets as datasets
    from medseg.cli import main

    real = datasets.load_case_volumes

    def with_nan(image_path, label_path, *args, **kwargs):
        image, label = real(image_path, label_path, *args, **kwargs)
        arr = np.array(image.array, dtype=np.float32)
        arr[arr > 0] = np.nan  # every soft-tissue voxel: any patch holds some
        return image.with_array(arr), label

    monkeypatch.setattr(datasets, "load_case_volumes", with_nan)
    with pytest.raises(SystemExit) as exc:
        main(["train", str(SMOKE), "--device", "cpu", "--set", f"output.dir={tmp_path}", "--set", "training.epochs=1",
              "--set", "training.steps_per_epoch=2", "--set", "data.validation=[]"])
    assert exc.value.code == 1
    printed = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert "error: the training loss is not finite (loss = nan) at step 1/2 of epoch 1" in printed
    assert "Traceback" not in printed
    assert not (tmp_path / "smoke" / "checkpoints" / "best.pt").exists()
    assert not (tmp_path / "smoke" / "checkpoints" / "last.pt").exists()


def test_non_finite_loss_error_message(tmp_path, monkeypatch):
    import medseg.data.datasets as datasets

    real = datasets.load_case_volumes

    def with_nan(image_path, label_path, *args, **kwargs):
        image, label = real(image_path, label_path, *args, **kwargs)
        arr = np.array(image.array, dtype=np.float32)
        arr[arr > 0] = np.nan
        return image.with_array(arr), label

    monkeypatch.setattr(datasets, "load_case_volumes", with_nan)
    with pytest.raises(TrainingError) as exc:
        train(SMOKE, overrides=[f"output.dir={tmp_path}", "training.epochs=1", "training.steps_per_epoch=2", "data.validation=[]"],
              device="cpu")
    msg = str(exc.value)
    assert "the training loss is not finite (loss = nan) at step 1/2 of epoch 1" in msg
    assert "batch case(s): ct_small" in msg and "no checkpoint" in msg


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from medseg.checkpoint import Checkpoint
    from medseg.engine.loop import _save

    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.bias.fill_(math.inf)
    path = tmp_path / "best.pt"
    with pytest.raises(TrainingError, match=r"parameter model.bias is not finite .* best.pt was not written"):
        _save(Checkpoint(task="denoising", model={}, state_dict=net.state_dict()), path, {"model": net}, epoch=0)
    assert not path.exists()


def test_noise_mix_gives_each_patch_one_of_the_models(tmp_path):
    """`noise.mix_with`: every training patch carries exactly one of the models, both occur, and
    each keeps its own level range (here far apart: ~300 HU white noise vs the few HU that half
    dose adds to the 3 mm scan)."""
    from medseg.config import load_workflow
    from medseg.engine.distributed import DistContext
    from medseg.engine.tasks.denoising import DenoisingTask

    raw = {**DENOISE, "noise": {"model": "ct_dose", "dose_range": [0.5, 0.5], "mix_with": ["gaussian"],
                                "sigma_range": [300, 300], "val_levels": [0.5]},
           "data": {"training": [{"image": "sample:ct_small", "name": "example_ct_sm"}], "validation": []}}
    cfg = load_workflow(raw, [f"output.dir={tmp_path}"])
    task = DenoisingTask(cfg, DistContext(0, 1, 0, torch.device("cpu")))
    from monai.data.utils import set_rnd

    set_rnd(task.train_dataset, 0)
    stds = []
    for _ in range(4):
        for patch in task.train_dataset[0]:
            residual = (patch["image"][1] - patch["target"][0]).numpy()  # the centre slice of the 3-slice stack
            stds.append(float(residual.std()) * 4095.0)  # network units → HU
    white = [s for s in stds if 250 < s < 350]
    dose = [s for s in stds if s < 30]
    assert len(white) + len(dose) == len(stds), stds
    assert white and dose, stds
    assert abs(np.mean(white) - 300.0) < 15.0


def test_rician_training_patches_carry_the_scans_noise_level(tmp_path):
    """Rician σ on training patches is the fraction times the *scan's* robust max: the
    background of every patch (clean value ≈ 0) shows the Rayleigh floor σ·√(π/2) of that σ, also
    on patches of background and dim tissue, whose own robust max is far smaller."""
    from medseg.config import load_workflow
    from medseg.engine.distributed import DistContext
    from medseg.engine.tasks.denoising import DenoisingTask
    from monai.data.utils import set_rnd

    raw = {**DENOISE, "preprocessing": {"modality": "MR"},
           "noise": {"model": "rician", "fraction_range": [0.05, 0.05], "val_levels": [0.05]},
           "data": {"training": [{"image": "sample:brain_mri", "name": "brain1"}], "validation": []}}
    cfg = load_workflow(raw, [f"output.dir={tmp_path}"])
    task = DenoisingTask(cfg, DistContext(0, 1, 0, torch.device("cpu")))
    set_rnd(task.train_dataset, 0)
    floor = 0.05 * math.sqrt(math.pi / 2)  # network units: the scan's P99.5 is 1
    checked = 0
    for _ in range(6):
        for patch in task.train_dataset[0]:
            assert "noise_reference" not in patch
            clean, noisy = patch["target"][0].numpy(), patch["image"][1].numpy()
            background = clean < 0.005  # air (x ≪ σ: the Rician mean is the Rayleigh floor)
            if background.sum() >= 100:
                checked += 1
                assert noisy[background].mean() == pytest.approx(floor, rel=0.15)
    assert checked >= 3


def test_noise_mix_config_errors_name_the_problem():
    from medseg.config import load_workflow
    from medseg.errors import ConfigError

    with pytest.raises(ConfigError, match="mix_with"):
        load_workflow({**DENOISE, "noise": {"model": "gaussian", "mix_with": ["gaussian"]}})
    mr = {**DENOISE, "preprocessing": {"modality": "MR"}, "noise": {"model": "rician", "mix_with": ["ct_dose"]}}
    with pytest.raises(ConfigError, match="ct_dose"):
        load_workflow(mr)


def test_field_of_view_pads_the_training_scans_with_air_only(tmp_path):
    """`training.field_of_view_mm`: the cached training scans (and their CT noise maps) are padded
    with network unit 0 (−1024 HU) to the field of view, and the validation scan is scored as it is."""
    from medseg.config import load_workflow
    from medseg.data.intensity import intensity_params, to_network_units
    from medseg.engine.distributed import DistContext
    from medseg.engine.tasks.denoising import MAPS_KEY, DenoisingTask

    raw = {**DENOISE, "noise": {"model": "ct_dose", "dose_range": [0.1, 0.1], "val_levels": [0.1]},
           "training": {**DENOISE["training"], "field_of_view_mm": 500.0}}
    cfg = load_workflow(raw, [f"output.dir={tmp_path}"])
    task = DenoisingTask(cfg, DistContext(0, 1, 0, torch.device("cpu")))
    cached = task.train_dataset.cached[0]
    image = np.asarray(cached["image"])
    assert image.shape[1:3] == (167, 167)  # 500 mm / 3 mm, from 122 × 101
    assert image[0, 0, 0, 0] == 0.0 and image[0, -1, -1, -1] == 0.0
    assert float(to_network_units(-1024.0, intensity_params(image, cfg.preprocessing.plan()["intensity"]))) == 0.0
    maps = cached[MAPS_KEY]
    assert tuple(maps.shape[1:3]) == (167, 167)
    assert tuple(task.val_dataset[0]["image"].shape[1:3]) == (122, 101)


def test_acquisition_noise_reaches_the_template_targets_only(tmp_path):
    """`noise.acquisition_noise`: the template's training targets carry an acquisition's Rayleigh
    floor where the template is 0; validation scores the scan as it is; a CT workflow cannot ask for it."""
    from medseg.config import load_workflow
    from medseg.engine.distributed import DistContext
    from medseg.engine.tasks.denoising import DenoisingTask
    from medseg.errors import ConfigError
    from monai.data.utils import set_rnd

    raw = {**DENOISE, "preprocessing": {"modality": "MR"},
           "noise": {"model": "rician", "fraction_range": [0.05, 0.05], "val_levels": [0.05], "acquisition_noise": 0.01},
           "data": {"training": [{"image": "sample:mni152_t1", "name": "mni152"}],
                    "validation": [{"image": "sample:mni152_t1", "name": "mni152"}]}}
    cfg = load_workflow(raw, [f"output.dir={tmp_path}"])
    task = DenoisingTask(cfg, DistContext(0, 1, 0, torch.device("cpu")))
    set_rnd(task.train_dataset, 0)
    targets = np.concatenate([p["target"][0].numpy().ravel() for _ in range(3) for p in task.train_dataset[0]])
    assert np.count_nonzero(targets == 0) == 0
    # network units are the floored scan's P99.5; the floor sits near 1 % of it (√(π/2)·σ₀)
    assert 0.005 < np.median(targets[targets < 0.05]) < 0.03
    assert np.count_nonzero(np.asarray(task.val_dataset[0]["image"]) == 0) > 0.5 * np.asarray(task.val_dataset[0]["image"]).size
    with pytest.raises(ConfigError, match="acquisition_noise"):
        load_workflow({**DENOISE, "noise": {"model": "gaussian", "acquisition_noise": 0.01}})


def test_zoom_texture_gives_zoomed_targets_the_fine_full_dose_grain(tmp_path):
    """`training.zoom_texture`: a patch zoomed 3× gets, in its clean target, the full-dose CT
    noise of its 1 mm pixels less what the 3 mm scan already had (std × sqrt(1 − 1/9)); the
    patches, the zoom and the training noise draws are otherwise those of the run without it."""
    from medseg.config import load_workflow
    from medseg.data.noise import _std_from_maps
    from medseg.engine.distributed import DistContext
    from medseg.engine.tasks.denoising import DenoisingTask
    from medseg.errors import ConfigError
    from monai.data.utils import set_rnd

    training = {**DENOISE["training"], "zoom_range": [3.0, 3.0], "field_of_view_mm": 500.0}
    noise = {"model": "ct_dose", "dose_range": [0.1, 0.1], "val_levels": [0.1]}
    targets = {}
    for on in (False, True):
        raw = {**DENOISE, "noise": noise, "training": {**training, "zoom_texture": on}}
        task = DenoisingTask(load_workflow(raw, [f"output.dir={tmp_path}"]), DistContext(0, 1, 0, torch.device("cpu")))
        set_rnd(task.train_dataset, 0)
        targets[on] = np.stack([p["target"][0].numpy() for p in task.train_dataset[0]]) * 4095.0  # HU
    added = targets[True] - targets[False]
    assert np.abs(targets[False]).max() > 0 and np.std(added) > 1.0
    # the expected std: the scan's full-dose std at 1 mm pixels (the 3 mm maps × 3), patch-averaged
    maps = np.asarray(task.train_dataset.cached[0]["ct_noise_maps"], dtype=np.float64) * 3.0
    std = _std_from_maps(maps[0], maps[1], 1e7, 0.5, 10.0, 1000) * np.sqrt(1 - 1 / 9)
    body = std[std > np.percentile(std, 5)]
    assert 0.5 * body.min() < np.std(added) < 1.5 * body.max()
    # zero mean, no bias in the target
    assert abs(added.mean()) < 0.1 * np.std(added)
    # no grain where the clean scan is at the plan's lowest HU (outside a reconstruction's circle)
    outside = targets[False] <= 0.5
    assert outside.any() and np.all(added[outside] == 0)
    with pytest.raises(ConfigError, match="zoom_texture"):
        load_workflow({**DENOISE, "training": {**training, "zoom_texture": True}}, [f"output.dir={tmp_path}"])
