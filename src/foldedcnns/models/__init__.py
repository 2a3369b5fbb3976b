"""Model zoo: game-scraping CNNs, NoScope CNNs, CIFAR ResNet-18 and compound-scaled baselines."""

from foldedcnns.models.registry import (
    ModelConfig,
    build_from_config,
    build_model,
    get_task,
    list_families,
    list_models,
    register_family,
    register_task,
)
from foldedcnns.models.spec import TaskSpec, load_description, spec_from_dict

__all__ = [
    "ModelConfig",
    "TaskSpec",
    "build_from_config",
    "build_model",
    "get_task",
    "list_families",
    "list_models",
    "load_description",
    "register_family",
    "register_task",
    "spec_from_dict",
]
