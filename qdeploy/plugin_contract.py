"""Identity of the fused quadratic ONNX nodes, shared by the exporter, the plugin loader and the engine builder.

TensorRT's ONNX parser maps a node to a plugin creator by op type, `plugin_version` and
`plugin_namespace` (or the node's domain), so every side must use the same names; they live
here, free of heavy imports, so `qdeploy plugins` and `qdeploy build` need not load the exporter.
The full contract (inputs, attributes, shapes) is in plugins/README.md.
"""

from __future__ import annotations

PLUGIN_DOMAIN = "trt.plugins"
PLUGIN_NAMESPACE = "qdeploy"
PLUGIN_VERSION = "1"
CONV_OP = "AtrousQuadConv"
PRODUCT_OP = "AtrousQuadProduct"
LINEAR_OP = "QuadLinear"
PLUGIN_OPS = (CONV_OP, PRODUCT_OP, LINEAR_OP)
