"""The model contract, defined once: ONNX graph I/O names, metadata keys and the repository card layout.

The export (:mod:`model_export.onnx_export`) writes it, the engines (:mod:`engines`) and the model
repository read it. Pure constants, no imports.

Graph: input ``lr_bicubic`` ``float32[N, 1, H, W]`` (bicubic-upscaled Y in [0, 1]; N, H, W dynamic),
output ``sr`` of the same shape, global residual inside the graph.
"""

INPUT_NAME = "lr_bicubic"
OUTPUT_NAME = "sr"

# ONNX metadata_props keys (all values are strings; JSON where noted).
META_CONFIG = "drrn.config"  # DRRNConfig as JSON
META_NAME = "drrn.name"
META_DEPTH = "drrn.depth"
META_RECEPTIVE_FIELD = "drrn.receptive_field"
META_PARAMS = "drrn.params"
META_FLOPS_PER_PIXEL = "drrn.flops_per_pixel"
META_SCALES = "drrn.scales"  # JSON list
META_WEIGHTS_SHA256 = "drrn.weights_sha256"
META_PRECISION = "drrn.precision"  # fp32 | fp16 | int8
META_MODEL_CARD = "drrn.model_card"  # JSON: provenance, training, evaluation

# Model repository: one folder per model, named after the model.
REPO_ONNX = "model.onnx"
REPO_ONNX_FP16 = "model.fp16.onnx"
REPO_ONNX_INT8 = "model.int8.onnx"
REPO_CARD = "card.json"
# weights/<name>.int8.json beside weights/<name>.safetensors: how to build its int8 file, and whether to
# serve it on the CPU.
INT8_RECIPE_SUFFIX = ".int8.json"
INT8_RECIPE_FORMAT = "drrn-int8-recipe/1"
CARD_FORMAT = "drrn-model-card/1"
# Bump when the export changes what an ONNX file computes or holds (graph, folding, metadata): every
# repository model built by an older exporter is then rebuilt by `make models` / first use.
EXPORT_VERSION = 3  # 2: rectified_skips models, overshoot parity case; 3: int8 recipes, swept tile sizes
