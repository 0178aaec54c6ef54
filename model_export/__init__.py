"""PyTorch side of the project: the DRRN module, weight files, foreign-weight import and ONNX export."""
