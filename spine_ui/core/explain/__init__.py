"""Explanations: Grad-CAM (exact CAM from features on ONNX, pytorch-grad-cam on torch) and LIME."""
