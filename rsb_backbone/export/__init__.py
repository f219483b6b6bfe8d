"""Deployment: norm folding (the deployment form), TorchScript/ONNX export, running exported models."""

from .exporter import FORMATS, Preprocessor, export_predictor, preprocessing_spec
from .exported_model import ExportedDetector
from ..modeling.fold_norms import fold_norm_into_conv, fold_norms, to_deployment_form

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
