"""The project's configs by name, as ``detectron2.model_zoo`` gives Detectron2's.

Example::

    from rsb_backbone import model_zoo

    cfg = model_zoo.get_config("COCO/mask_rcnn_rsb_r50_fpn_1x.py")        # LazyConfig
    cfg = model_zoo.get_config("yacs/mask_rcnn_rsb_r50_fpn_1x.yaml")      # yacs CfgNode
    path = model_zoo.get_config_file("shapes/faster_rcnn_rsb_r18_fpn_shapes_quick.py")
"""

from .model_zoo import configs_root, get_config, get_config_file

__all__ = ["configs_root", "get_config", "get_config_file"]
