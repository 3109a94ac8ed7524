"""Neural quadratic models (NQM) and the catapult phase of large-learning-rate training.

Zhu, Liu, Radhakrishnan, Belkin, "Quadratic models for understanding catapult dynamics of
neural networks" (arXiv 2205.11787) and Lewkowycz et al. 2020 (arXiv 2003.02218): the
second-order Taylor model of a network around its initialisation reproduces the catapult
that its linearization cannot, and the top tangent-kernel eigenvalue `lambda0` at
initialisation sets the learning-rate regimes (`2/lambda0`, `4/lambda0`).

The names below load on first use, so that importing the package (as the CLI does for its
defaults) does not import torch.
"""

from __future__ import annotations

from qdeploy.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "CatapultDetector": "catapult",
    "CatapultEvent": "catapult",
    "Regime": "catapult",
    "classify_losses": "catapult",
    "LrProbe": "lr_probe",
    "ScanPoint": "lr_probe",
    "probe_learning_rates": "lr_probe",
    "LinearizedModel": "models",
    "QuadraticModel": "models",
    "TaylorModel": "models",
    "lanczos_top_eigenvalue": "sharpness",
    "tangent_kernel": "sharpness",
    "top_gauss_newton_eigenvalue": "sharpness",
    "top_hessian_eigenvalue": "sharpness",
    "top_kernel_eigenvalue": "sharpness",
    "gradient_descent": "training",
    "half_mse": "training",
    "TwoLayerReLU": "two_layer",
})
