"""Read a workflow YAML, apply ``--set key=value`` overrides, validate, resolve paths.

Errors are `ConfigError`s that name the key, list the valid keys at that level and suggest the
closest one (``training.epoch`` → "did you mean 'epochs'?").
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from medseg.config.schema import WorkflowBase
from medseg.config.variants import WORKFLOW_VARIANTS, WorkflowConfig
from medseg.errors import ConfigError

SAMPLE_PREFIX = "sample:"
DEFAULT_TASK = "segmentation"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` → ``(["optim", "lr"], 0.0001)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set training.epochs=5")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    if isinstance(parsed, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            parsed = float(parsed)
        except ValueError:
            pass
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Set each ``a.b.c=value`` in the nested dict `raw` (in place; returns it)."""
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``X``, ``list[X]``, ``X | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _model_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at `loc` (its last element), from `root`."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _submodel(field.annotation) if field is not None else None
    return model


def _format_errors(exc: ValidationError, source: str, task: Any) -> str:
    lines = [f"{source}: invalid workflow configuration"]
    root = WORKFLOW_VARIANTS.get(task) if isinstance(task, str) else None
    for err in exc.errors():
        loc = tuple(err["loc"])
        if root is not None and loc[:1] == (task,):  # a discriminated union puts the variant's tag first
            loc = loc[1:]
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "union_tag_invalid":
            hint = difflib.get_close_matches(str(task), list(WORKFLOW_VARIANTS), n=1, cutoff=0.5)
            lines.append(
                f"  - task: unknown task {str(task)!r}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                + f"; tasks: {', '.join(WORKFLOW_VARIANTS)}"
            )
        elif err["type"] == "extra_forbidden" and root is not None:
            model = _model_at(loc, root)
            valid = sorted(model.model_fields) if model else []
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            msg = f"  - {where}: unknown key"
            if hint:
                msg += f" (did you mean '{hint[0]}'?)"
            if valid:
                msg += f"; valid keys here: {', '.join(valid)}"
            lines.append(msg)
        elif err["type"] == "missing":
            lines.append(f"  - {where}: required key is missing")
        else:
            got = err.get("input")
            shown = repr(got) if not isinstance(got, dict) else "{...}"
            lines.append(f"  - {where}: {err['msg']} (got {shown[:80]})")
    return "\n".join(lines)


#: validates a raw dict into the variant its ``task`` names (built once: it compiles the schema)
_WORKFLOW_ADAPTER: TypeAdapter[Any] = TypeAdapter(WorkflowConfig)


def validate_config(raw: dict[str, Any], source: str = "workflow") -> WorkflowConfig:
    """Validate a raw nested dict into the `WorkflowConfig` variant its ``task`` names.

    A workflow without ``task`` is a segmentation workflow (every workflow before the task
    union was one).

    Raises:
        ConfigError: not a mapping, unknown task (with the closest task name), unknown key (with
            the valid keys of that task's section and the closest one), wrong type or value.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a workflow must be a YAML mapping, found {type(raw).__name__}")
    raw = {"task": DEFAULT_TASK, **raw} if raw.get("task") is None else raw
    try:
        return _WORKFLOW_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, raw.get("task"))) from None


def resolve_path(value: str, base_dir: Path) -> str:
    """A config path made absolute: ``sample:NAME`` → the bundled file, relative → against `base_dir`."""
    if value.startswith(SAMPLE_PREFIX):
        from medseg import sample_data

        name = value[len(SAMPLE_PREFIX) :]
        try:
            return str(sample_data.path(name))
        except KeyError as exc:
            raise ConfigError(f"{value!r}: {exc.args[0]}") from None
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _resolve_paths(cfg: WorkflowConfig, base_dir: Path) -> WorkflowConfig:
    data = cfg.data
    if data.datalist:
        data.datalist = resolve_path(data.datalist, base_dir)
    if data.nnunet_dir:
        data.nnunet_dir = resolve_path(data.nnunet_dir, base_dir)
    if getattr(data, "review_file", None):  # segmentation workflows only
        data.review_file = resolve_path(data.review_file, base_dir)
    for cases in (data.training, data.validation):
        for i, case in enumerate(cases):
            # model_copy keeps a variant's own case fields (e.g. the GAN's slice range)
            cases[i] = case.model_copy(update={
                "image": resolve_path(case.image, base_dir),
                "label": resolve_path(case.label, base_dir) if case.label else None,
            })
    if getattr(data, "paired", None):  # task gan: real full-/low-dose pairs
        data.paired.root = resolve_path(data.paired.root, base_dir)
    if getattr(cfg.model, "pretrained", None):
        cfg.model.pretrained = resolve_path(cfg.model.pretrained, base_dir)
    if getattr(cfg.loss, "perceptual_checkpoint", None):  # task gan
        cfg.loss.perceptual_checkpoint = resolve_path(cfg.loss.perceptual_checkpoint, base_dir)
    return cfg


def load_workflow(
    source: str | os.PathLike[str] | dict[str, Any] | WorkflowConfig, overrides: list[str] | tuple[str, ...] = ()
) -> WorkflowConfig:
    """Load and validate a workflow, with overrides applied and every path made absolute.

    Args:
        source: a YAML file, a nested dict (paths relative to the current directory), or a
            `WorkflowConfig`.
        overrides: ``"a.b=value"`` strings (value parsed as YAML), applied before validation.

    Raises:
        ConfigError: missing/unparsable file, unknown key (with the valid keys and a
            suggestion), wrong type or value.
    """
    if isinstance(source, WorkflowBase):
        raw: Any = source.model_dump(mode="json")
        name, base_dir = "workflow", Path.cwd()
    elif isinstance(source, dict):
        import copy

        raw = copy.deepcopy(source)
        name, base_dir = "workflow", Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: workflow file not found")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        name, base_dir = str(path), path.resolve().parent
    if raw is None:
        raw = {}
    if isinstance(raw, dict):
        apply_overrides(raw, overrides)
    cfg = validate_config(raw, name + (f" (with --set {' '.join(overrides)})" if overrides else ""))
    return _resolve_paths(cfg, base_dir)


def dump_config(cfg: WorkflowConfig) -> str:
    """The resolved config as YAML (saved as ``<run>/config.yaml``)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def describe_config(task: str | None = None) -> str:
    """Every workflow option with its default and description (``medseg train --help-config``).

    Args:
        task: one task's options only (``"segmentation"``, ``"denoising"``); None: every task's,
            each under a ``task: NAME`` heading.

    Raises:
        ConfigError: an unknown task.
    """
    from pydantic_core import PydanticUndefined

    if task is not None and task not in WORKFLOW_VARIANTS:
        hint = difflib.get_close_matches(task, list(WORKFLOW_VARIANTS), n=1, cutoff=0.5)
        raise ConfigError(f"unknown task {task!r}" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                          + f"; tasks: {', '.join(WORKFLOW_VARIANTS)}")
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str, depth: int) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            sub = _submodel(field.annotation)
            if sub is not None:
                lines.append(f"{'  ' * depth}{key}{'[]' if 'list' in str(field.annotation) else ''}:  {field.description}")
                walk(sub, f"{key}[]." if "list" in str(field.annotation) else f"{key}.", depth + 1)
                continue
            default = "required" if field.default is PydanticUndefined and field.default_factory is None else (
                f"default {field.default_factory() if field.default_factory else field.default!r}"
            )
            lines.append(f"{'  ' * depth}{key} ({default}):  {field.description}")

    for name, variant in WORKFLOW_VARIANTS.items():
        if task is None or task == name:
            lines.append(f"== task: {name}{' (the default)' if name == DEFAULT_TASK else ''}: {variant.__doc__.splitlines()[0]}")
            walk(variant, "", 0)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
