"""Inference backends (TensorRT, torch CUDA, ONNX Runtime) and their caches."""
