"""Typed, validated workflow configuration (YAML → a `WorkflowConfig` variant chosen by ``task``).

``load_workflow(path, overrides)`` is the entry point; `medseg.config.schema` holds the models,
each field documented.
"""

from medseg.config.loading import apply_overrides, describe_config, dump_config, load_workflow, parse_override, resolve_path, validate_config
from medseg.config.gan_schema import GanWorkflow
from medseg.config.schema import (
    AugmentationConfig,
    CaseConfig,
    DataConfig,
    DenoisingLossConfig,
    DenoisingModelConfig,
    DenoisingTrainingConfig,
    DenoisingWorkflow,
    ImagePreprocessingConfig,
    LossConfig,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    OutputConfig,
    PreprocessingConfig,
    SegmentationOptimConfig,
    SegmentationTrainingConfig,
    SegmentationWorkflow,
    TrainingConfig,
    UnlabelledDataConfig,
    WorkflowBase,
)
from medseg.config.variants import WORKFLOW_VARIANTS, WorkflowConfig

__all__ = [
    "WORKFLOW_VARIANTS",
    "AugmentationConfig",
    "CaseConfig",
    "DataConfig",
    "DenoisingLossConfig",
    "DenoisingModelConfig",
    "DenoisingTrainingConfig",
    "DenoisingWorkflow",
    "GanWorkflow",
    "ImagePreprocessingConfig",
    "LossConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimConfig",
    "OutputConfig",
    "PreprocessingConfig",
    "SegmentationOptimConfig",
    "SegmentationTrainingConfig",
    "SegmentationWorkflow",
    "TrainingConfig",
    "UnlabelledDataConfig",
    "WorkflowBase",
    "WorkflowConfig",
    "apply_overrides",
    "describe_config",
    "dump_config",
    "load_workflow",
    "parse_override",
    "resolve_path",
    "validate_config",
]
