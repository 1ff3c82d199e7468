"""Typed, validated workflow configuration (YAML → `WorkflowConfig`).

``load_workflow(path, overrides)`` is the entry point; `medseg.config.schema` holds the models,
each field documented.
"""

from medseg.config.loading import apply_overrides, describe_config, dump_config, load_workflow, parse_override, resolve_path, validate_config
from medseg.config.schema import (
    AugmentationConfig,
    CaseConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    OutputConfig,
    PreprocessingConfig,
    TrainingConfig,
    WorkflowConfig,
)

__all__ = [
    "AugmentationConfig",
    "CaseConfig",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "PreprocessingConfig",
    "TrainingConfig",
    "WorkflowConfig",
    "apply_overrides",
    "describe_config",
    "dump_config",
    "load_workflow",
    "parse_override",
    "resolve_path",
    "validate_config",
]
