"""Deployment: the folded inference form of a detector, TorchScript/ONNX export, and running the
exported models."""

from .deployment_form import to_deployment_form
from .export import FORMATS, export_predictor
from .exported_model import ExportedDetector
from .fold_norms import fold_norm_into_conv, fold_norms, is_foldable_norm
from .preprocessing import Preprocessor, preprocessing_spec

__all__ = [
    "FORMATS",
    "ExportedDetector",
    "Preprocessor",
    "export_predictor",
    "fold_norm_into_conv",
    "fold_norms",
    "is_foldable_norm",
    "preprocessing_spec",
    "to_deployment_form",
]
