"""The CAM methods by name and what each heatmap costs, without importing pytorch-grad-cam (seconds), so that
building the app's UI can list them; flowerdemo.infer.explain maps the names to the methods' classes."""

from __future__ import annotations

CAM_NAMES = ("gradcam", "gradcam++", "hirescam", "scorecam", "eigencam", "layercam", "xgradcam")
# Expected seconds a heatmap adds after the app's answer, per method, for the UI to show where the method is
# chosen: measured through the running app (plain HTTP, as a browser: the heatmap message and its picture's
# download after the label's), p50 of 7 round trips of a 12 MP JPEG (4000x3000), the shipped model, the
# onnxruntime twins on (Grad-CAM reuses the answer's forward), the quiet 2-core development machine (AMD EPYC,
# no GPU): `python benchmarks/serving.py --client http --cam-requests 7 --clients 0 --big-clients 0
# --train-requests 0 --requests 10` (docs/benchmarks.md §5). In-process, without that delivery, Grad-CAM takes
# 12 ms (`benchmarks/cam_faithfulness.py --time-photo PHOTO --app`).
CAM_SECONDS = {"gradcam": 0.04, "gradcam++": 0.13, "hirescam": 0.12, "scorecam": 1.9,
               "eigencam": 0.2, "layercam": 0.13, "xgradcam": 0.14}
