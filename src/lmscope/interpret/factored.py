"""`FactoredMatrix`: a product ``A @ B`` kept as its two factors.

A head's QK and OV circuits are ``d_model x d_model`` (``vocab x vocab`` through the
embeddings) but have rank at most ``d_head``: ``W_Q W_K^T`` and ``W_V W_O`` ("A
Mathematical Framework for Transformer Circuits", Elhage et al., 2021). Kept as
factors ``A: [..., m, k]`` and ``B: [..., k, n]`` they cost ``(m + n) k`` numbers
instead of ``m n``, and everything the analyses need comes from ``k x k`` matrices:

- eigenvalues: the non-zero eigenvalues of ``AB`` are those of ``BA`` (``[k, k]``);
- singular values: with ``A = Q_A R_A`` and ``B^T = Q_B R_B`` (thin QR),
  ``AB = Q_A (R_A R_B^T) Q_B^T``, so the SVD of the small core gives the SVD of ``AB``;
- Frobenius norm: ``||AB||_F = ||R_A R_B^T||_F`` (orthonormal factors keep norms).

Leading dimensions are batch dimensions (one matrix per head...), broadcast like
``torch.matmul``. Products keep the inner dimension as small as possible.
"""

from __future__ import annotations

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from lmscope.errors import LmscopeError


class FactoredMatrix:
    """``A @ B`` without forming it: ``A: [..., m, k]``, ``B: [..., k, n]``."""

    def __init__(self, a: Tensor, b: Tensor) -> None:
        """Keep factors `a` (``A: [..., m, k]``) and `b` (``B: [..., k, n]``).

        Batch dims broadcast. Shapes are checked here, with errors that say what is wrong.
        """
        if a.ndim < 2 or b.ndim < 2:
            raise LmscopeError(
                f"FactoredMatrix needs two matrices (>= 2 dims); got A {tuple(a.shape)}, "
                f"B {tuple(b.shape)}."
            )
        if a.shape[-1] != b.shape[-2]:
            raise LmscopeError(
                f"FactoredMatrix: A {tuple(a.shape)} and B {tuple(b.shape)} do not "
                f"multiply (A has {a.shape[-1]} columns, B {b.shape[-2]} rows)."
            )
        try:
            batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except RuntimeError as exc:
            raise LmscopeError(
                f"FactoredMatrix: batch dims of A {tuple(a.shape)} and B {tuple(b.shape)} "
                "do not broadcast."
            ) from exc
        self.A = a.expand(*batch, *a.shape[-2:])
        self.B = b.expand(*batch, *b.shape[-2:])

    # --- shape --------------------------------------------------------------------------
    @property
    def ldim(self) -> int:
        """Rows of the product (``m``)."""
        return self.A.shape[-2]

    @property
    def mdim(self) -> int:
        """Inner dimension (``k``): an upper bound on the rank."""
        return self.A.shape[-1]

    @property
    def rdim(self) -> int:
        """Columns of the product (``n``)."""
        return self.B.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """Shape of the product: ``[..., m, n]``."""
        return torch.Size((*self.A.shape[:-1], self.rdim))

    @property
    def ndim(self) -> int:
        """Number of dimensions of the product."""
        return self.A.ndim

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, inner={self.mdim})"

    # --- products -----------------------------------------------------------------------
    @property
    def AB(self) -> Float[Tensor, "*batch m n"]:
        """The dense product (``m x n``: large for vocabulary-sized circuits)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "*batch k k"]:
        """The small product ``B @ A`` (square products only): same non-zero spectrum."""
        self._require_square("BA")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose: ``(AB)^T = B^T A^T``."""
        return FactoredMatrix(self.B.mT, self.A.mT)

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        """``self @ other``; a vector gives a dense vector, a matrix a `FactoredMatrix`."""
        if isinstance(other, FactoredMatrix):
            # (A1 B1)(A2 B2): put the small middle B1 A2 on the side with the smaller
            # inner dimension, so the result's inner dimension is min(k1, k2).
            middle = self.B @ other.A
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, middle @ other.B)
            return FactoredMatrix(self.A @ middle, other.B)
        if other.ndim == 1:  # as a column, so batch dims broadcast: [..., m]
            return (self.A @ (self.B @ other).unsqueeze(-1)).squeeze(-1)
        # Keep the thinner inner dimension: k (factor B absorbs `other`) or n (form AB).
        if self.mdim <= self.rdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        """``other @ self``."""
        if other.ndim == 1:  # as a row: [..., n]
            return ((other @ self.A).unsqueeze(-2) @ self.B).squeeze(-2)
        if self.mdim <= self.ldim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float) -> FactoredMatrix:
        """Scale the product."""
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __getitem__(self, index: int | slice | tuple[int | slice, ...]) -> FactoredMatrix:
        """Index the batch dimensions (``circuit[head]``); rows/columns are not indexable."""
        n_batch = self.A.ndim - 2
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) > n_batch:
            raise LmscopeError(
                f"FactoredMatrix of shape {tuple(self.shape)} has {n_batch} batch dims; "
                f"index {index!r} indexes {len(idx)} (take .AB to index rows and columns)."
            )
        return FactoredMatrix(self.A[idx], self.B[idx])

    # --- spectrum -----------------------------------------------------------------------
    @property
    def eigenvalues(self) -> Complex[Tensor, "*batch k"]:
        """The ``k`` eigenvalues of ``BA``: ``AB``'s non-zero eigenvalues (plus zeros)."""
        return torch.linalg.eigvals(_upcast(self.BA))

    def svd(
        self,
    ) -> tuple[Float[Tensor, "*batch m r"], Float[Tensor, "*batch r"], Float[Tensor, "*batch r n"]]:
        """Thin SVD ``AB = U diag(S) Vh`` (torch's convention: `Vh` is ``V^T``).

        ``r = min(m, n, k)`` singular values, largest first, from the SVD of the
        ``R_A R_B^T`` core of the factors' QR decompositions.
        """
        q_a, r_a = torch.linalg.qr(_upcast(self.A))
        q_b, r_b = torch.linalg.qr(_upcast(self.B).mT)
        u, s, vh = torch.linalg.svd(r_a @ r_b.mT, full_matrices=False)
        return q_a @ u, s, vh @ q_b.mT

    @property
    def S(self) -> Float[Tensor, "*batch r"]:
        """Singular values, largest first."""
        return self.svd()[1]

    def norm(self) -> Float[Tensor, "*batch"]:
        """Frobenius norm of the product, from the ``k x k`` core (no ``m x n`` product)."""
        r_a = torch.linalg.qr(_upcast(self.A), mode="r")[1]
        r_b = torch.linalg.qr(_upcast(self.B).mT, mode="r")[1]
        return torch.linalg.matrix_norm(r_a @ r_b.mT)

    def _require_square(self, what: str) -> None:
        if self.ldim != self.rdim:
            raise LmscopeError(
                f"{what} needs a square product; this one is {self.ldim} x {self.rdim}."
            )


def _upcast(t: Tensor) -> Tensor:
    """Linear algebra in at least float32 (CPU QR/SVD/eig have no half-precision kernels)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
