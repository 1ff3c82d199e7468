"""`WorkflowConfig`: the workflow of any task, a discriminated union of the variants by ``task``."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from medseg.config.gan_schema import GanWorkflow
from medseg.config.schema import DenoisingWorkflow, SegmentationWorkflow, WorkflowBase

__all__ = ["WORKFLOW_VARIANTS", "WorkflowConfig"]

#: task name → its workflow model (the variants of `WorkflowConfig`)
WORKFLOW_VARIANTS: dict[str, type[WorkflowBase]] = {
    "segmentation": SegmentationWorkflow, "denoising": DenoisingWorkflow, "gan": GanWorkflow,
}

#: a workflow of any task: the variant is chosen by ``task`` (validate with `medseg.config.validate_config`)
WorkflowConfig = Annotated[Union[SegmentationWorkflow, DenoisingWorkflow, GanWorkflow], Field(discriminator="task")]
