"""The low-dose CT GAN (task gan) on the bundled CT: a short WGAN-GP run whose content loss
falls while the critic's loss stays finite, exact resume after a stop (critic and both
optimizers restored), the generator checkpoint applied by `medseg enhance` to the held-out
DICOM series, and the content-only (RED-CNN MSE) variant."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.checkpoint import load_checkpoint
from medseg.engine import train
from medseg.engine.logs import read_epoch_log

#: slices 40-55 of example_ct (16 slices, 3 mm) at 2 simulated doses for training; the first 6
#: slices of example_ct_sm (= example_ct slices 82-87, not trained on) for validation
GAN = {
    "name": "gan_test", "task": "gan", "seed": 0,
    "data": {"training": [{"image": "sample:ct", "name": "ct_40-55", "slices": [40, 56]}],
             "validation": [{"image": "sample:ct_small", "name": "ct_sm_0-5", "slices": [0, 6]}]},
    "preprocessing": {"modality": "CT"},
    # a low dose at a fixed, low I0 (the calibrated default gives 3 mm voxels only a few HU):
    # strong noise (tens of HU) that the generator can learn to remove quickly
    "simulation": {"dose_range": [0.05, 0.1], "doses_per_case": 2, "val_doses": [0.07], "views": 90,
                   "photons_per_ray": 1.5e5},
    "model": {"generator": {"name": "rdb_generator", "context_slices": 1,
                            "options": {"channels": 8, "n_blocks": 1, "growth": 4, "layers_per_block": 2}},
              "critic": {"channels": 8, "n_layers": 2}},
    "loss": {"content": {"l1": 1.0}, "adversarial_weight": 1e-4},
    "optim": {"lr_generator": 3e-3, "lr_critic": 1e-3, "n_critic": 1},
    "training": {"epochs": 4, "steps_per_epoch": 8, "batch_size": 1, "patches_per_case": 8, "patch_size": [32, 32],
                 "val_every": 2, "val_max_slices": 3, "torch_threads": 2},
    "output": {"tensorboard": False},
}


def _ov(tmp_path: Path, *extra: str) -> list[str]:
    return [f"output.dir={tmp_path}", *extra]


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory):
    return train(GAN, overrides=_ov(tmp_path_factory.mktemp("gan")), device="cpu")


@pytest.mark.slow
def test_short_gan_run_lowers_the_content_loss_with_a_finite_critic(gan_run):
    rows = read_epoch_log(gan_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    content = [r["train_content"] for r in rows]
    assert content[-1] < 0.9 * content[0] and max(content[2:]) < min(content[:2]), content
    for r in rows:
        for key in ("train_critic", "train_gradient_penalty", "train_wasserstein", "train_adversarial"):
            assert math.isfinite(r[key]), (key, r)
        assert r["train_gradient_penalty"] >= 0
    last = rows[-1]
    # the generator started as the identity (psnr = the low-dose input's) and must have improved on it
    assert last["val_psnr_db"] > last["val_psnr_low_db"] + 0.3, last
    assert last["val_rmse_hu"] < last["val_rmse_low_hu"]
    cases = (gan_run / "validation_cases.csv").read_text().splitlines()
    assert cases[0] == "epoch,case,dose,psnr_low_db,psnr_db,ssim_low,ssim,rmse_low_hu,rmse_hu" and "ct_sm_0-5,0.07" in cases[1]
    ckpt = load_checkpoint(gan_run / "checkpoints" / "last.pt", expected_task="gan")
    assert ckpt.model["name"] == "rdb_generator" and ckpt.inference["context_slices"] == 1
    assert ckpt.preprocessing["intensity"]["kind"] == "hu_linear"
    ts = ckpt.training_state
    assert set(ts["networks"]) == {"critic"} and set(ts["optimizers"]) == {"generator", "critic"}
    assert set(ts["schedulers"]) == {"generator", "critic"} and set(ts["scalers"]) == {"generator", "critic"}
    assert ts["optimizers"]["critic"]["param_groups"][0]["betas"] == (0.5, 0.9)


@pytest.mark.slow
def test_gan_resume_after_a_stop_continues_exactly(gan_run, tmp_path):
    first = train(GAN, overrides=_ov(tmp_path, "training.stop_after_epoch=2"), device="cpu")
    assert [int(r["epoch"]) for r in read_epoch_log(first / "metrics.csv")] == [1, 2]
    resumed = train(GAN, overrides=_ov(tmp_path), device="cpu", resume=True)
    a, b = read_epoch_log(gan_run / "metrics.csv"), read_epoch_log(resumed / "metrics.csv")
    assert [int(r["epoch"]) for r in b] == [1, 2, 3, 4]
    for key in ("train_loss", "train_content", "train_critic", "train_gradient_penalty", "lr", "lr_critic"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5, err_msg=key)
    ca, cb = load_checkpoint(gan_run / "checkpoints" / "last.pt"), load_checkpoint(resumed / "checkpoints" / "last.pt")
    for k in ca.state_dict:
        torch.testing.assert_close(cb.state_dict[k], ca.state_dict[k], rtol=1e-4, atol=1e-5)
    for k, v in ca.training_state["networks"]["critic"].items():
        torch.testing.assert_close(cb.training_state["networks"]["critic"][k], v, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_enhance_applies_the_gan_generator_to_the_held_out_dicom_series(gan_run, tmp_path, sample):
    """`medseg enhance` on the 20-slice DICOM series with the GAN's best.pt: a derived series in
    HU on the source grid that equals `predict_image`'s output and differs from the input."""
    import shutil

    from typer.testing import CliRunner

    from medseg.cli import app
    from medseg.inference import load_model
    from medseg.inference.image import predict_image
    from medseg.io import read_nifti
    from medseg.io.dicom import read_dicom_series, scan_dicom_folder

    tree = tmp_path / "in"
    shutil.copytree(sample("ct_dicom"), tree / "ct")
    out = tmp_path / "out"
    ckpt = gan_run / "checkpoints" / "best.pt"
    r = CliRunner().invoke(app, ["enhance", str(tree), str(out), "--model", str(ckpt), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((out / "segment.json").read_text())["series"]
    assert row["status"] == "done"
    source = read_dicom_series(scan_dicom_folder(tree).series[0])
    image = read_nifti(out / row["stem"] / "image.nii.gz")
    np.testing.assert_allclose(image.affine, source.affine, atol=1e-4)
    expected = predict_image(source, load_model(ckpt, "cpu"), device="cpu").array
    np.testing.assert_allclose(image.array, expected, atol=1e-2)
    diff = np.abs(image.array - source.array.astype(np.float32))
    assert 0.1 < float(diff.mean()) < 100  # changed, but still the same anatomy in HU
    (derived,) = scan_dicom_folder(out / row["stem"] / "dicom").series
    back = read_dicom_series(derived)
    assert back.array.shape == source.array.shape
    assert np.abs(back.array - image.array).max() <= 1.0  # stored as integer HU


@pytest.mark.slow
def test_content_only_variant_is_a_critic_free_denoising_checkpoint(tmp_path):
    cfg = copy.deepcopy(GAN)
    cfg["model"]["generator"] = {"name": "redcnn", "context_slices": 0, "options": {"features": 8, "kernel_size": 3}}
    cfg["loss"] = {"content": {"mse": 1.0}, "adversarial_weight": 0}
    cfg["training"] |= {"epochs": 2, "val_every": 2}
    run = train(cfg, overrides=_ov(tmp_path), device="cpu")
    rows = read_epoch_log(run / "metrics.csv")
    assert "train_critic" not in rows[0] and math.isfinite(rows[-1]["val_psnr_db"])
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt", expected_task="denoising")
    assert ckpt.model["name"] == "redcnn" and set(ckpt.training_state["optimizers"]) == {"generator"}


def test_texture_targets_carry_full_dose_noise_and_the_low_doses_are_simulated_from_them():
    from medseg.config import load_workflow
    from medseg.engine.tasks.gan import build_pairs

    base = copy.deepcopy(GAN)
    base["data"]["training"][0]["slices"] = [44, 47]
    base["simulation"] |= {"doses_per_case": 1, "dose_range": [0.2, 0.2]}
    plain = build_pairs(load_workflow(base), "training")[0]
    textured = build_pairs(load_workflow(base, ["simulation.texture_targets=true"]), "training")[0]
    body = plain["target"][0] > (-300 + 1024) / 4095  # network units of -1024..3071 HU
    added = (textured["target"] - plain["target"])[0][body] * 4095  # HU
    inserted = (plain["image"][0] - plain["target"][0])[body] * 4095
    # a full-dose scan's variance is 1 unit of 1/d - 1 (= 4 units at d = 0.2) in the same rays
    ratio = float(added.var() / (inserted.var() / 4))
    assert 0.8 < ratio < 1.25, ratio
    # the low-dose copy is simulated from the noisy target: it adds 4 units on top of it
    on_top = float(((textured["image"][0] - textured["target"][0])[body] * 4095).var() / inserted.var())
    assert 0.85 < on_top < 1.2, on_top
    assert textured["doses"] == plain["doses"]

