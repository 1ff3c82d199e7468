import numpy as np
import pytest
import torch

from medseg.data.intensity import from_network_units, intensity_params, to_network_units
from medseg.errors import ConfigError
from medseg.io import load_volume
from medseg.sample_data import path as sample_path


def test_hu_linear_round_trip_on_real_ct_is_exact_without_clipping():
    ct = load_volume(sample_path("ct_small")).array.astype(np.float64)
    params = intensity_params(ct, {"kind": "hu_linear", "hu_min": -1024, "hu_max": 3071})
    x = to_network_units(ct, params)
    assert x.min() == pytest.approx((ct.min() + 1024) / 4095)
    np.testing.assert_allclose(from_network_units(x, params), ct, atol=1e-9)


def test_percentile_scale_keeps_zero_and_inverts_on_torch():
    mr = torch.as_tensor(load_volume(sample_path("mr_small")).array.astype(np.float32))
    params = intensity_params(mr, {"kind": "percentile_scale", "upper": 99.5})
    x = to_network_units(mr, params)
    assert float(x[mr == 0].abs().max()) == 0.0
    assert 0.9 < float(torch.quantile(x[mr != 0].flatten()[::7], 0.995)) < 1.1
    torch.testing.assert_close(from_network_units(x, params), mr, rtol=1e-5, atol=1e-3)


def test_clipping_plans_are_refused():
    with pytest.raises(ConfigError, match="cannot be inverted"):
        intensity_params(np.zeros(3), {"kind": "ct_window", "hu_min": -100, "hu_max": 200})
    with pytest.raises(ConfigError, match="greater than"):
        intensity_params(np.zeros(3), {"kind": "hu_linear", "hu_min": 10, "hu_max": 10})
