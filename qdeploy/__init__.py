"""qdeploy: adapt pretrained vision models into quadratic networks and ship them.

Data flows one way: model -> adapted model -> ONNX -> engine -> server. Each stage lives
in its own sub-package (layers, adaptation, training, export, runtime, serving, nqm).
"""

__version__ = "0.1.0"

from qdeploy.lazy import lazy_exports  # noqa: E402  (after __version__, which the store reads)

# One import for the common API (PEP 562: loaded on first use, so `import qdeploy` stays cheap).
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "adapt": "workflows.adapt", "unadapt": "adaptation", "QuadConfig": "layers", "load_base_model": "models.sources",
    "load": "store", "load_model": "store", "save": "store",
})
