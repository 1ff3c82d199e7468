"""The NUFFT (Fourier-slice) projector computes the direct projector's operators: line
integrals, FBP round trip, the noise of a filtered white sinogram, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.ct.fourier_projector import FourierProjector
from medseg.ct.low_dose import hu_to_mu
from medseg.ct.projector import CTGeometry, Projector
from medseg.errors import ConfigError

from .phantoms import smooth_phantom

GEOMETRIES = [
    dict(image_shape=(64, 64), pixel_spacing_mm=(2.0, 2.0), n_views=90),  # defaults: odd bin count
    dict(image_shape=(81, 70), pixel_spacing_mm=(1.3, 0.9), n_views=97, n_detectors=130),  # odd/even, anisotropic
]


@pytest.mark.parametrize("kw", GEOMETRIES)
def test_line_integrals_match_the_direct_projector(kw):
    geo = CTGeometry(**kw)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, *geo.image_shape, generator=gen) * 0.02
    direct, fourier = Projector(geo).forward(x), FourierProjector(geo).forward(x)
    assert fourier.shape == direct.shape == (2, geo.views, geo.detectors)
    rel = float((fourier - direct).norm() / direct.norm())
    assert rel < 5e-3, rel


def test_line_integrals_of_a_real_slice_match(ct_slices):
    hu, spacing = ct_slices
    mu = hu_to_mu(torch.from_numpy(hu[..., 0].astype(np.float32)))
    geo = CTGeometry(mu.shape, spacing, n_views=60)
    direct, fourier = Projector(geo).forward(mu), FourierProjector(geo).forward(mu)
    assert float((fourier - direct).norm() / direct.norm()) < 1e-3
    # the variance that noise insertion derives from them (e^p) agrees ray by ray too
    assert float((fourier.exp() / direct.exp() - 1).abs().max()) < 0.05


@pytest.mark.parametrize("kw", GEOMETRIES)
@pytest.mark.parametrize("window", ["ram-lak", "hann"])
def test_fbp_of_white_noise_has_the_direct_fbp_statistics(kw, window):
    geo = CTGeometry(**kw)
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(3, geo.views, geo.detectors, generator=gen, dtype=torch.float64)
    direct, fourier = Projector(geo).fbp(y, window), FourierProjector(geo).fbp(y, window)
    assert fourier.dtype == torch.float64 and fourier.shape == direct.shape
    # the same image, to what the cut of the interpolator's spectrum leaves out (module doc)
    corr = float(torch.corrcoef(torch.stack((fourier.flatten(), direct.flatten())))[0, 1])
    assert corr > 0.99, corr
    assert abs(float(fourier.std() / direct.std()) - 1) < 0.01


def test_fbp_round_trip_on_a_smooth_phantom():
    mu = torch.from_numpy(smooth_phantom())
    fp = FourierProjector(CTGeometry(tuple(mu.shape), (1.5, 1.7)))
    rec = fp.fbp(fp.forward(mu))
    assert float((rec - mu).norm() / mu.norm()) < 0.01


def test_the_same_bits_whatever_the_batch_and_the_thread_count():
    geo = CTGeometry((48, 48), (2.0, 2.0), n_views=40)
    gen = torch.Generator().manual_seed(2)
    y = torch.randn(5, geo.views, geo.detectors, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref_fbp = torch.stack([FourierProjector(geo).fbp(y[k], "hann") for k in range(5)])
        ref_fwd = FourierProjector(geo).forward(ref_fbp)
        for n in (2, 3, 4):  # more threads than cores, and chunks of unequal length
            torch.set_num_threads(n)
            fp = FourierProjector(geo)
            for _ in range(3):  # plans reused, threads finishing in any order
                assert torch.equal(fp.fbp(y, "hann"), ref_fbp)
                assert torch.equal(fp.forward(ref_fbp), ref_fwd)
            assert torch.equal(fp.fbp(y[:3], "hann"), ref_fbp[:3])
    finally:
        torch.set_num_threads(threads)


def test_rejects_the_fan_beam_and_bad_shapes():
    with pytest.raises(ConfigError, match="parallel"):
        FourierProjector(CTGeometry((32, 32), (1.0, 1.0), kind="fan"))
    fp = FourierProjector(CTGeometry((32, 32), (1.0, 1.0), n_views=10))
    with pytest.raises(ConfigError, match="expected an image"):
        fp.forward(torch.zeros(1, 31, 32))
    with pytest.raises(ConfigError, match="filter"):
        fp.fbp(torch.zeros(10, fp.geometry.detectors), filter="nope")
