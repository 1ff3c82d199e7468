"""The gan variant of the workflow union: --help-config, did-you-mean hints, --set, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.config import GanWorkflow, describe_config, load_workflow
from medseg.errors import ConfigError

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


@pytest.mark.parametrize("name", ["ldct_wgan.yaml", "ldct_redcnn.yaml"])
def test_the_ldct_workflows_load(name):
    cfg = load_workflow(WORKFLOWS / name, ["optim.n_critic=4", "simulation.doses_per_case=2"])
    assert isinstance(cfg, GanWorkflow) and cfg.optim.n_critic == 4 and len(cfg.simulation.training_doses()) == 2
    assert cfg.data.training[0].slices == (0, 82)  # the case's own field survives path resolution
    assert Path(cfg.data.training[0].image).is_file()


def test_help_config_and_hints_cover_the_gan():
    text = describe_config("gan")
    assert "optim.n_critic (default 5)" in text and "loss.gp_lambda (default 10.0)" in text and "data.paired.low_dose_dir" in text
    with pytest.raises(ConfigError, match="did you mean 'n_critic'"):
        load_workflow(WORKFLOWS / "ldct_wgan.yaml", ["optim.n_critc=3"])
    with pytest.raises(ConfigError, match="did you mean 'gan'"):
        load_workflow({"name": "x", "task": "gann", "data": {}})


def test_invalid_gan_settings_are_refused():
    base = {"name": "x", "task": "gan", "data": {"training": [{"image": "sample:ct"}]}}
    with pytest.raises(ConfigError, match="perceptual_checkpoint"):
        load_workflow({**base, "loss": {"perceptual_weight": 0.1}})
    with pytest.raises(ConfigError, match="either 'training'"):
        load_workflow({**base, "data": {}})
    with pytest.raises(ConfigError, match=r"dose fractions must be in \(0, 1\]"):
        load_workflow({**base, "simulation": {"val_doses": [1.5]}})
    with pytest.raises(ConfigError, match="modality must be CT"):
        load_workflow({**base, "preprocessing": {"modality": "MR"}})
