"""flowerdemo: fine-tune an ImageNet CNN on a folder of photos, predict, and explain with Grad-CAM."""

__version__ = "0.1.0"
