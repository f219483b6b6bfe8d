"""Deployment: the folded inference form of a detector, TorchScript/ONNX export, and running the
exported models."""

from .export import FORMATS, export_predictor
from .exported_model import ExportedDetector
from .fold_norms import fold_norm_into_conv, fold_norms, to_deployment_form
from .preprocessing import Preprocessor, preprocessing_spec

__all__ = [
    "FORMATS",
    "ExportedDetector",
    "Preprocessor",
    "export_predictor",
    "fold_norm_into_conv",
    "fold_norms",
    "preprocessing_spec",
    "to_deployment_form",
]
