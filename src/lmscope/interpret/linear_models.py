"""Solvers behind the linear probes: logistic regression by Newton-CG, ridge in closed form.

Both minimise a mean loss plus ``l2 * ||w||^2`` with an unpenalised bias. Logistic
regression is convex, so Newton's method reaches the optimum in a few dozen steps. Each
Newton step is solved by conjugate gradients on Hessian-vector products, so the Hessian
([features x classes]^2) is never formed and memory stays at a few copies of the
weights, whatever the width; an Armijo backtracking line search keeps every step a
descent. Written out here rather than with ``torch.optim`` (whose first use costs
seconds of imports) and without scikit-learn (not a dependency).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

#: Gradient norm at which Newton's method stops (the loss is at most ~log(K) here).
_GRAD_TOL = 1e-9
#: Conjugate-gradient iterations per Newton step, at most.
_CG_STEPS = 100


def _conjugate_gradient(
    hess_vec: Callable[[Tensor], Tensor], rhs: Tensor, tol: float, max_steps: int
) -> Tensor:
    """Approximate solution of ``H x = rhs`` for a positive semi-definite H."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = (r * r).sum()
    for _ in range(max_steps):
        if rr.sqrt() <= tol:
            break
        hp = hess_vec(p)
        curvature = (p * hp).sum()
        if curvature <= 0:  # flat direction (a softmax's shared bias shift): stop here
            break
        alpha = rr / curvature
        x += alpha * p
        r -= alpha * hp
        rr_next = (r * r).sum()
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


def fit_logistic(
    x: Float[Tensor, "n d"],
    target: Int[Tensor, " n"],
    n_classes: int,
    *,
    l2: float,
    steps: int = 100,
) -> tuple[Tensor, Tensor]:
    """Weights and bias minimising mean cross-entropy + ``l2 * ||w||^2``.

    Two classes: one logit (sigmoid), weights [d] and a scalar bias; more: softmax over
    `n_classes` logits, weights [d, n_classes] and bias [n_classes]. `target` holds class
    indices. Runs at most `steps` Newton steps (fewer once the gradient vanishes).
    """
    n, d = x.shape
    k = 1 if n_classes == 2 else n_classes
    x1 = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)  # bias as a last feature
    penalty = torch.ones(d + 1, 1, dtype=x.dtype)
    penalty[-1] = 0.0  # the bias is not penalised
    y = target.to(x.dtype)[:, None] if k == 1 else F.one_hot(target, n_classes).to(x.dtype)

    def loss_of(theta: Tensor) -> tuple[Tensor, Tensor]:
        """The objective and the predicted probabilities."""
        z = x1 @ theta
        if k == 1:
            loss = (F.softplus(z) - y * z).mean()  # binary cross-entropy from logits
            p = torch.sigmoid(z)
        else:
            logp = z.log_softmax(-1)
            loss = -(y * logp).sum(-1).mean()
            p = logp.exp()
        return loss + l2 * (penalty * theta.square()).sum(), p

    theta = torch.zeros(d + 1, k, dtype=x.dtype)
    loss, p = loss_of(theta)
    for _ in range(steps):
        grad = x1.T @ (p - y) / n + 2 * l2 * penalty * theta
        grad_norm = float(grad.norm())
        if grad_norm < _GRAD_TOL:
            break

        def hess_vec(v: Tensor, p: Tensor = p) -> Tensor:
            zv = x1 @ v
            if k == 1:
                weighted = p * (1 - p) * zv
            else:  # the softmax Jacobian diag(p) - p p^T, applied row by row
                pz = p * zv
                weighted = pz - p * pz.sum(-1, keepdim=True)
            return x1.T @ weighted / n + 2 * l2 * penalty * v

        # Inexact Newton: solve to a tolerance that tightens as the gradient shrinks.
        tol = min(0.5, grad_norm**0.5) * grad_norm
        step = _conjugate_gradient(hess_vec, -grad, tol, min(_CG_STEPS, theta.numel()))
        slope = float((grad * step).sum())
        if slope >= 0:  # not a descent direction (numerically flat): take the gradient
            step, slope = -grad, -(grad_norm**2)
        t = 1.0
        while True:
            new_loss, new_p = loss_of(theta + t * step)
            if new_loss <= loss + 1e-4 * t * slope or t < 1e-10:
                break
            t /= 2
        theta = theta + t * step
        converged = float(loss - new_loss) <= 1e-15 * max(1.0, float(loss.abs()))
        loss, p = new_loss, new_p
        if converged:
            break
    weights, bias = theta[:-1], theta[-1]
    return (weights[:, 0], bias[0]) if k == 1 else (weights, bias)


def fit_ridge(
    x: Float[Tensor, "n d"], y: Float[Tensor, " n"], *, l2: float
) -> tuple[Tensor, Tensor]:
    """Closed-form minimiser of ``mean((x w + b - y)^2) + l2 * ||w||^2`` (bias unpenalised).

    With ``l2 = 0`` the least-squares solution of minimum norm (more features than rows
    is allowed).
    """
    n = x.shape[0]
    x_mean, y_mean = x.mean(0), y.mean()
    xc, yc = x - x_mean, y - y_mean
    if l2 > 0:
        gram = xc.T @ xc / n + l2 * torch.eye(x.shape[1], dtype=x.dtype)
        w = torch.linalg.solve(gram, xc.T @ yc / n)
    else:
        w = torch.linalg.lstsq(xc, yc[:, None], driver="gelsd").solution[:, 0]
    return w, y_mean - x_mean @ w


__all__ = ["fit_logistic", "fit_ridge"]
