"""Optimal Brain Surgeon pruning of one layer with weight updates (SparseGPT-style), in numpy.

For a layer ``Y = W X`` (``W`` as ``[G, R, C]``: groups, rows, columns) and its input Hessian
``H = X X^T`` per group (:mod:`onnxfit.pruning.activations`), :func:`obs_prune` zeroes exactly
``count`` weights and updates the others so that the output on the calibration inputs moves
little (Frantar & Alistarh 2022, "Optimal Brain Compression", and 2023, "SparseGPT"):

* ``H`` gets a damping of ``damp`` x its mean diagonal (columns never seen get 1 and keep
  their weights unless chosen), then
  ``U = chol(H^-1)`` (upper);
* columns are processed left to right in blocks of ``block``: in each block the weights to
  prune are the smallest ``w^2 / U_jj^2`` (the OBS saliency) over the whole block — all rows and
  groups together — with the block's share of ``count`` (the shares sum to ``count`` exactly);
  each column's pruning error is pushed into the columns to its right (``w -= e U_j,j:``),
  inside the block column by column and onto the rest of the matrix once per block.

:func:`output_error` measures ``||(W - W') X||^2`` from ``H``.
"""

from __future__ import annotations

import numpy as np

from onnxfit.pruning.scores import smallest


def damped(h: np.ndarray, damp: float) -> np.ndarray:
    """``h`` (``[G, C, C]``) plus ``damp`` x its mean diagonal per group; dead columns get 1."""
    h = np.array(h, np.float64, copy=True)
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    diag[dead] = 1.0
    mean = diag.mean(axis=1, keepdims=True)
    diag += damp * mean
    return h


def inverse_cholesky(h: np.ndarray) -> np.ndarray:
    """Upper ``U`` with ``U^T U = h^-1`` per group (``h`` already damped): with ``J`` the
    reversal, ``J h J = L L^T`` gives ``h = A A^T`` for the upper ``A = J L J``, so
    ``U = A^-1`` (one Cholesky and one inverse)."""
    flipped = np.linalg.cholesky(h[:, ::-1, ::-1])
    a = np.ascontiguousarray(flipped[:, ::-1, ::-1])
    return np.triu(np.linalg.inv(a))


def block_counts(count: int, sizes: list[int], zeros: list[int] | None = None) -> list[int]:
    """``count`` spread over blocks of ``sizes`` weights in proportion, summing exactly. With
    ``zeros`` (weights already zero per block) every block first gets its zeros (as far as
    ``count`` goes) and the rest is spread over the non-zero weights, so that a zero weight is
    never left unmasked while a non-zero one is pruned (the zeros of the result stay exact)."""
    if zeros is not None:
        if count <= sum(zeros):
            return block_counts(count, list(zeros))
        rest = block_counts(count - sum(zeros), [n - z for n, z in zip(sizes, zeros, strict=True)])
        return [z + r for z, r in zip(zeros, rest, strict=True)]
    total = sum(sizes)
    if total == 0:
        return [0] * len(sizes)
    cum = [(count * int(e) * 2 + total) // (2 * total) for e in np.cumsum([0, *sizes])]
    return [cum[i + 1] - cum[i] for i in range(len(sizes))]


def inverse_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """The upper ``U`` of :func:`obs_prune` for the Hessian ``h``: ``chol(H^-1)`` of ``h``
    damped by ``damp``."""
    return inverse_cholesky(damped(h, damp))


def obs_prune(
    w: np.ndarray,
    h: np.ndarray | None,
    count: int,
    *,
    block: int = 128,
    damp: float = 0.01,
    u: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``w`` ``[G, R, C]`` with exactly ``count`` zeros (module docstring) and the boolean mask
    of the pruned positions. ``h`` is ``[G, C, C]``, or ``u`` its :func:`inverse_factor`
    when already computed (one layer pruned to several counts); nothing is changed in
    place."""
    w = np.array(w, np.float64, copy=True)
    g, r, c = w.shape
    mask = np.zeros(w.shape, bool)
    if count <= 0:
        return w, mask
    if u is None:
        assert h is not None, "obs_prune needs h or u"
        u = inverse_factor(h, damp)
    starts = list(range(0, c, block))
    counts = block_counts(
        count,
        [g * r * (min(s + block, c) - s) for s in starts],
        [int(np.count_nonzero(w[:, :, s : s + block] == 0)) for s in starts],
    )
    for s, k in zip(starts, counts, strict=True):
        e = min(s + block, c)
        w1 = w[:, :, s:e].copy()
        u1 = u[:, s:e, s:e]
        d = np.einsum("gii->gi", u1)  # [G, B]
        score = np.square(w1) / np.square(d)[:, None, :]
        flat = np.zeros(w1.size, bool)
        flat[smallest(score, k)] = True
        m1 = flat.reshape(w1.shape)
        err = np.zeros_like(w1)
        for j in range(e - s):
            q = np.where(m1[:, :, j], 0.0, w1[:, :, j])
            ej = (w1[:, :, j] - q) / d[:, None, j]  # [G, R]
            w1[:, :, j:] -= ej[:, :, None] * u1[:, None, j, j:]
            w1[:, :, j] = q
            err[:, :, j] = ej
        w[:, :, s:e] = w1
        if e < c:
            w[:, :, e:] -= np.matmul(err, u[:, s:e, e:])
        mask[:, :, s:e] = m1
    w[mask] = 0.0
    return w, mask


def output_error(w: np.ndarray, w2: np.ndarray, h: np.ndarray) -> float:
    """``sum ||(w - w2) X||^2`` over groups, from ``H = X X^T`` (``[G, C, C]``)."""
    return energy(np.asarray(w, np.float64) - np.asarray(w2, np.float64), h)


def energy(w: np.ndarray, h: np.ndarray) -> float:
    """``sum ||w X||^2`` over groups, from ``H = X X^T`` (``[G, C, C]``)."""
    return float(np.sum(np.matmul(w, h) * w))
