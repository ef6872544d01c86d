"""Serving a trained model: image preprocessing, prediction, Grad-CAM explanation."""
