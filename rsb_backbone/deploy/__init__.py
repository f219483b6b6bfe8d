"""Deployment: the folded inference form of a detector, and TorchScript/ONNX export."""

from .deployment_form import to_deployment_form
from .fold_norms import fold_norm_into_conv, fold_norms, is_foldable_norm

__all__ = ["fold_norm_into_conv", "fold_norms", "is_foldable_norm", "to_deployment_form"]
