"""Memory-efficient backward for the product term `U(A(x) * B(x))` (QuadraLib's "hybrid BP").

Plain autograd keeps A(x), B(x) and their product alive until backward: three tensors of
`rank` channels per layer on top of x. This Function keeps only x (the weights are alive
anyway) and recomputes the factors in backward:
    gP = U^T g,   gA = gP * B(x),   gB = gP * A(x),
then pushes gA and gB back through the factor layers (their own vector-Jacobian products).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vjp


def _named(module: nn.Module | None) -> list[str]:
    return [] if module is None else [name for name, _ in module.named_parameters()]


class _RecomputedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, modules: tuple, names: tuple, *params: torch.Tensor):
        a, b, proj = modules
        ctx.modules, ctx.names = modules, names
        ctx.autocast = (x.device.type, torch.is_autocast_enabled(x.device.type),
                        torch.get_autocast_dtype(x.device.type))
        ctx.save_for_backward(x, *params)
        product = a(x) * b(x)
        return product if proj is None else proj(product)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, *params = ctx.saved_tensors
        device_type, enabled, dtype = ctx.autocast
        groups, start = [], 0
        for module, names in zip(ctx.modules, ctx.names):
            groups.append(dict(zip(names, params[start:start + len(names)])))
            start += len(names)
        a_mod, b_mod, proj = ctx.modules
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            a, vjp_a = vjp(lambda inp, p: functional_call(a_mod, p, (inp,)), x, groups[0])
            b, vjp_b = vjp(lambda inp, p: functional_call(b_mod, p, (inp,)), x, groups[1])
            grad_proj: dict[str, torch.Tensor] = {}
            if proj is not None:
                _, vjp_u = vjp(lambda inp, p: functional_call(proj, p, (inp,)), a * b, groups[2])
                grad, grad_proj = vjp_u(grad)
            gx_a, grad_a = vjp_a(grad * b)
            gx_b, grad_b = vjp_b(grad * a)
        flat = [g[name] for g, names in zip((grad_a, grad_b, grad_proj), ctx.names) for name in names]
        return (gx_a + gx_b, None, None, *flat)


def recomputed_product(x: torch.Tensor, a: nn.Module, b: nn.Module, proj: nn.Module | None) -> torch.Tensor:
    """`proj(a(x) * b(x))` with activation memory of x alone; gradients equal autograd's."""
    modules: Sequence[nn.Module | None] = (a, b, proj)
    names = tuple(tuple(_named(m)) for m in modules)
    params = [p for m in modules if m is not None for p in m.parameters()]
    return _RecomputedProduct.apply(x, tuple(modules), names, *params)
