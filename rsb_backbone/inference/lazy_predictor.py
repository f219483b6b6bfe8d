"""``DefaultPredictor``'s interface for a detector described by a LazyConfig."""

import logging
import os
from typing import Any, Dict, Sequence, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from ..config import dataset_names, load_config_with_overrides, resolve_device, set_score_threshold
from ..checkpoint.detection_checkpoint import load_detector_checkpoint
from ..checkpoint.model_metadata import config_model_metadata, detectron2_metadata
from ..modeling.backbone.timm_resnet import skip_pretrained_weights
from ..modeling.fold_norms import to_deployment_form
from ..utils.mixed_precision import autocast, outputs_to_float32, resolve_precision

logger = logging.getLogger(__name__)


class LazyConfigPredictor:
    """A detector from a LazyConfig and a checkpoint, called like ``DefaultPredictor``: images are
    resized with the config's ``dataloader.test.mapper.augmentations``, as evaluation does.

    Attributes:
        cfg: the LazyConfig (with overrides applied).
        model: the detector, in eval mode on ``device``.
        metadata: class names and category ids: the checkpoint's, else those the config records
            (a saved ``config.yaml``'s ``metadata``), else its first test data set's; else empty.
        input_format: "RGB" or "BGR", what the model takes.
        augmentations: the test-time resizing.
        precision: the dtype the model computes in (under ``torch.autocast`` unless float32).
    """

    def __init__(
        self,
        config_file_or_cfg: Union[str, DictConfig],
        checkpoint: str,
        *,
        device: str = "cpu",
        score_threshold: float = 0.5,
        overrides: Sequence[str] = (),
        fuse: bool = False,
        precision: str = "float32",
    ):
        """
        Args:
            config_file_or_cfg: a LazyConfig ``.py`` file, the ``config.yaml`` that
                a training run saves, or a loaded LazyConfig (not changed).
            checkpoint: detector checkpoint trained with this config (``.pth``/``.safetensors``),
                read tensors-only; every weight of the model must be in it, so the backbone's
                own pretrained weights are not loaded.
            device: "cpu", "cuda", "cuda:N", or "auto" for CUDA when present.
            score_threshold: smallest score of a returned detection, in [0, 1].
            overrides: ``KEY=VALUE`` config overrides, as on the training command line.
            fuse: run the deployment form of the model (:func:`rsb_backbone.modeling.fold_norms.to_deployment_form`).
            precision: "float32", or "bfloat16" / "float16" (CUDA only) under ``torch.autocast``;
                the weights stay float32 and the outputs are float32.
        """
        if not isinstance(config_file_or_cfg, (str, os.PathLike, DictConfig)):
            raise ValueError(
                f"config_file_or_cfg is a {type(config_file_or_cfg).__name__}; expected a LazyConfig "
                f"file path or the DictConfig that LazyConfig.load returns"
            )
        self.cfg = load_config_with_overrides(config_file_or_cfg, overrides)
        mapper = OmegaConf.select(self.cfg, "dataloader.test.mapper", default=None)
        if mapper is None or "augmentations" not in mapper:
            raise ValueError(
                "the LazyConfig has no dataloader.test.mapper.augmentations; the predictor resizes "
                "images with the test augmentations of the config the model was evaluated with"
            )
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if skip_pretrained_weights(self.cfg.model):
            logger.info("Backbone pretrained weights not loaded: the detector checkpoint holds them")
        self.model = instantiate(self.cfg.model)
        set_score_threshold(self.model, score_threshold)
        stored = load_detector_checkpoint(self.model, checkpoint)
        self.model.to(self.device).eval()
        if fuse:
            to_deployment_form(self.model)

        self.augmentations = T.AugmentationList([instantiate(a) for a in mapper.augmentations])
        # What the evaluation loader feeds the model; the model's own input_format otherwise.
        self.input_format = mapper.get("image_format", None) or getattr(self.model, "input_format", None)
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"input format {self.input_format!r} (dataloader.test.mapper.image_format): "
                f"expected one of ('RGB', 'BGR')"
            )
        source = checkpoint
        if stored is None:
            source = config_file_or_cfg if isinstance(config_file_or_cfg, (str, os.PathLike)) else "config"
            stored = config_model_metadata(self.cfg, os.fspath(source))
        names = dataset_names(OmegaConf.select(self.cfg, "dataloader.test.dataset.names", default=None) or [])
        test_metadata = MetadataCatalog.get(names[0]) if names else Metadata()
        self.metadata = detectron2_metadata(stored, test_metadata, name=os.fspath(source))

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        """
        Args:
            original_image: (H, W, 3) uint8 image in **BGR** order, as for ``DefaultPredictor``.

        Returns:
            ``{"instances": Instances}`` in original image coordinates, on ``device``.
        """
        if not isinstance(original_image, np.ndarray) or original_image.shape[2:] != (3,):  # (H, W, 3)
            shape = getattr(original_image, "shape", None)
            raise ValueError(f"original_image has shape {shape}; expected a (H, W, 3) BGR numpy array")
        with torch.no_grad():
            image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
            aug_input = T.AugInput(np.ascontiguousarray(image))
            self.augmentations(aug_input)
            tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
            inputs = {"image": tensor.to(self.device), "height": image.shape[0], "width": image.shape[1]}
            if self.precision == torch.float32:
                return self.model([inputs])[0]
            with autocast(self.device, self.precision):
                outputs = self.model([inputs])[0]
            return outputs_to_float32(outputs)
