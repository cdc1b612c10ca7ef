"""ONNX export, engine building, parity checks."""
