"""Model registry: paper CIFAR ResNets, torchvision models, a small net for the embedded data."""

from proqha.models import cifar_resnet, small, tv  # noqa: F401  (registration)
from proqha.models.registry import ModelSpec, create_model, get_model_spec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]
