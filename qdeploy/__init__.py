"""qdeploy: adapt pretrained vision models into quadratic networks and ship them.

Data flows one way: model -> adapted model -> ONNX -> engine -> server. Each stage lives
in its own sub-package (layers, adaptation, training, export, runtime, serving, nqm).
"""

__version__ = "0.1.0"
