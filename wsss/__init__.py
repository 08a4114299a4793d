"""wsss: weakly-supervised semantic segmentation from image-level labels (WS-FCN and SSSS)."""

__version__ = "0.1.0"
