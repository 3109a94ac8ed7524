"""Quadratic layers: y = primary(x) + quad(x), one concept per module (timm `layers/` style)."""

from qdeploy.layers.atrous_conv import AtrousConv2d, matching_padding
from qdeploy.layers.config import QuadConfig
from qdeploy.layers.quadratic import QuadraticLayer, quadratic_conv2d, quadratic_layer, quadratic_linear
from qdeploy.layers.terms import ProductTerm, RBFTerm

__all__ = [
    "AtrousConv2d",
    "ProductTerm",
    "QuadConfig",
    "QuadraticLayer",
    "RBFTerm",
    "matching_padding",
    "quadratic_conv2d",
    "quadratic_layer",
    "quadratic_linear",
]
