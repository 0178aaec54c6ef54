"""Inference engines: the Engine seam, the ONNX Runtime and PyTorch backends, the model repository and
the one resolver from a model name or path to an engine."""
