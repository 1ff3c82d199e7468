"""predict_image: image-to-image checkpoints on the bundled real CT (ct_small, 122×101×30 at 3 mm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg import sample_data
from medseg.errors import CheckpointError
from medseg.inference.image import predict_image
from medseg.inference.model import LoadedModel
from medseg.io import Volume, load_volume
from medseg.models import build_model
from medseg.models.image_nets import ResidualConvNet

CT_PLAN = {"modality": "CT", "spacing_mm": None, "orientation": "RAS", "intensity": {"kind": "hu_linear", "hu_min": -1024.0, "hu_max": 3071.0}}


@pytest.fixture(scope="module")
def ct() -> Volume:
    return load_volume(sample_data.path("ct_small"))


def _model(network: torch.nn.Module, spatial_dims: int, context: int = 0, roi=None, overlap: float = 0.25) -> LoadedModel:
    return LoadedModel(
        path=Path("test-image-model.pt"),
        network=network.eval(),
        labels={},
        plan=dict(CT_PLAN),
        inference={"spatial_dims": spatial_dims, "context_slices": context, "roi_size": roi, "overlap": overlap},
        device=torch.device("cpu"),
        fingerprint="test",
    )


def _random_net(spatial_dims: int, in_channels: int = 1, seed: int = 0) -> ResidualConvNet:
    """A ResidualConvNet whose residual is not zero (the built one starts as the identity)."""
    torch.manual_seed(seed)
    net = ResidualConvNet(spatial_dims, in_channels=in_channels, channels=4, n_layers=2)
    last = net.body[-1]
    torch.nn.init.normal_(last.weight, std=0.05)
    return net.eval()


def _to_net(hu: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((hu.astype(np.float32) + 1024.0) / 4095.0).astype(np.float32))


def _from_net(x: torch.Tensor) -> np.ndarray:
    return x.numpy() * 4095.0 - 1024.0


def test_identity_network_returns_the_input_hu(ct):
    net = build_model({"name": "residual_conv", "spatial_dims": 2, "in_channels": 1, "channels": 8})
    out = predict_image(ct, _model(net, 2))
    assert out.array.dtype == np.float32
    assert out.shape == ct.shape and np.array_equal(out.affine, ct.affine)
    assert np.abs(out.array - ct.array).max() < 1e-3
    assert np.array_equal(np.rint(out.array).astype(np.int16), ct.array)


def test_2d_model_runs_on_axial_slices_of_the_ras_volume_whatever_the_input_orientation(ct):
    """An LPS volume with permuted axes gets the RAS answer back on its own grid."""
    model = _model(_random_net(2), 2)
    ref = predict_image(ct, model).array
    assert np.abs(ref - ct.array).max() > 1.0  # the network does change the image
    # the same voxels with axes (z, x, y) and x, y flipped: another array, another affine, same world
    arr = np.transpose(ct.array[::-1, ::-1, :], (2, 0, 1)).copy()
    flip = np.eye(4)
    flip[0, 0] = flip[1, 1] = -1
    flip[0, 3], flip[1, 3] = ct.shape[0] - 1, ct.shape[1] - 1
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1  # new (a, b, c) → old-flipped (b, c, a)
    aff = ct.affine @ flip @ perm
    other = Volume(arr, aff, {"modality": "CT"})
    assert other.orientation != "RAS"
    out = predict_image(other, model)
    assert np.array_equal(out.affine, aff) and out.shape == arr.shape
    np.testing.assert_allclose(out.array, np.transpose(ref[::-1, ::-1, :], (2, 0, 1)), atol=1e-3)


def test_context_model_replicates_edge_slices_on_one_and_three_slice_volumes(ct):
    net = _random_net(2, in_channels=3, seed=1)
    model = _model(net, 2, context=1)
    for n in (1, 3):
        sub = Volume(ct.array[:, :, 10 : 10 + n].copy(), ct.affine, {"modality": "CT"})
        out = predict_image(sub, model).array
        x = _to_net(sub.array)
        for z in range(n):
            idx = [min(max(z + d, 0), n - 1) for d in (-1, 0, 1)]
            stack = x[:, :, idx].permute(2, 0, 1)[None]
            with torch.no_grad():
                want = _from_net(net(stack)[0, 0])
            np.testing.assert_allclose(out[:, :, z], want, atol=2e-3)
    # each slice only sees its neighbours: slice 11 of the full volume == the middle of slices 10..12
    full = predict_image(ct, model).array
    three = predict_image(Volume(ct.array[:, :, 10:13].copy(), ct.affine, {}), model).array
    np.testing.assert_allclose(full[:, :, 11], three[:, :, 1], atol=2e-3)
    assert np.abs(full[:, :, 10] - three[:, :, 0]).max() > 0.01  # the edge slice saw itself twice


def test_3d_sliding_window_identity_and_against_monai(ct):
    from monai.inferers import sliding_window_inference

    identity = ResidualConvNet(3, in_channels=1, channels=4, n_layers=2)
    seen = []
    out = predict_image(ct, _model(identity, 3, roi=[64, 64, 16], overlap=0.5), progress=lambda s, d, t: seen.append((d, t)))
    assert np.array_equal(np.rint(out.array).astype(np.int16), ct.array)
    assert seen and seen[-1][0] == seen[-1][1]
    net = _random_net(3, seed=2)
    out = predict_image(ct, _model(net, 3, roi=[64, 64, 16], overlap=0.5)).array
    with torch.no_grad():
        want = sliding_window_inference(_to_net(ct.array)[None, None], (64, 64, 16), 1, net, overlap=0.5, mode="gaussian")
    np.testing.assert_allclose(out, _from_net(want[0, 0]), atol=2e-3)
    whole = predict_image(ct, _model(net, 3, roi=None)).array
    with torch.no_grad():
        np.testing.assert_allclose(whole, _from_net(net(_to_net(ct.array)[None, None])[0, 0]), atol=2e-3)


def test_non_finite_voxels_stay_local_and_are_reported(ct):
    arr = ct.array.astype(np.float32)
    arr[50:52, 50:52, 5] = np.nan
    arr[0, 0, 0] = np.inf
    out = predict_image(Volume(arr, ct.affine, {"warnings": ["earlier"]}), _model(_random_net(2), 2))
    assert np.isfinite(out.array).all()
    assert out.meta["warnings"][0] == "earlier" and "5 non-finite voxel(s)" in out.meta["warnings"][1]
    ref = predict_image(ct, _model(_random_net(2), 2)).array
    np.testing.assert_allclose(out.array[:, :, 10:], ref[:, :, 10:], atol=2e-3)  # other slices untouched


def test_mismatched_context_is_a_checkpoint_error(ct):
    with pytest.raises(CheckpointError, match="context_slices"):
        predict_image(ct, _model(_random_net(2, in_channels=1), 2, context=2))
    with pytest.raises(CheckpointError, match="spatial_dims 2"):
        predict_image(ct, _model(_random_net(3), 3, context=1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_tta_is_the_mean_over_mirrored_copies(ct, spatial_dims):
    """``tta=True``: the mean of the network's answers on mirrored copies, each mirrored back
    (2-D: the four in-plane mirrorings; 3-D: identity and a flip per axis), with one progress bar."""
    from medseg.inference.image import image_flips

    ras = Volume(ct.array.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]), {"modality": "CT"})
    model = _model(_random_net(spatial_dims, seed=2), spatial_dims)
    calls: list[tuple[int, int]] = []
    got = predict_image(ras, model, tta=True, progress=lambda stage, done, total: calls.append((done, total))).array
    flips = image_flips(spatial_dims, True)
    assert len(flips) == 4 and flips[0] == ()
    want = np.zeros_like(got)
    for axes in flips:
        mirrored = Volume(np.ascontiguousarray(np.flip(ras.array, axes)), ras.affine, {})
        want += np.flip(predict_image(mirrored, model).array, axes)
    np.testing.assert_allclose(got, want / 4, atol=2e-3)
    plain = predict_image(ras, model).array
    assert np.abs(got - plain).max() > 0.05  # the network is not mirror-symmetric: TTA changes the answer
    assert calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len({t for _, t in calls}) == 1
