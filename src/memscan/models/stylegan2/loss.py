"""StyleGAN2-ADA's losses: the non-saturating logistic loss and the lazy R1 penalty.

Goodfellow et al. 2014 (arXiv 1406.2661): the generator minimises ``softplus(−D(G(z)))``, the
discriminator ``softplus(D(G(z))) + softplus(−D(x))``. Mescheder et al. 2018, "Which Training Methods for
GANs do actually Converge?" (arXiv 1801.04406): the R1 penalty ``γ/2 · E‖∇ₓD(x)‖²`` on real images; applied
every ``interval`` steps and weighted by the interval (lazy regularization, StyleGAN2 Sec. 3.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """``E[softplus(−D(G(z)))]`` over logits ``[B]`` (computed in float32)."""
    return F.softplus(-logits_fake.float()).mean()


def discriminator_loss(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> torch.Tensor:
    """``E[softplus(D(G(z)))] + E[softplus(−D(x))]`` over float32 logits ``[B]``."""
    return F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()


def r1_penalty(logits_real: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``E‖∇ₓD(x)‖²`` (a 0-d tensor with a graph for the double backward).

    Args:
        logits_real: ``D(real)`` ``[B]``.
        real: the images ``[B, C, *S]`` D saw, with ``requires_grad``.
    """
    (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
    return grad.float().square().sum(dim=tuple(range(1, grad.ndim))).mean()


def lazy_r1(r1: torch.Tensor, gamma: float, interval: int) -> torch.Tensor:
    """The R1 term added to the discriminator loss on an R1 step: ``r1 · γ/2 · interval``."""
    return r1 * (gamma / 2) * interval
