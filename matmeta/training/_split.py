"""Train/validation/test splits: random, or by family (no family in two splits)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from matmeta.errors import InputError

__all__ = ["split_indices"]


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0,
                  families: Sequence | None = None, by: str = "random",
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the train, validation and test sets.

    Example:
        >>> train, val, test = split_indices(100, (0.8, 0.1, 0.1), seed=0)
        >>> train, val, test = split_indices(len(fam), by="family", families=fam)

    Args:
        n: number of samples.
        fractions: (train, val, test) fractions, summing to 1; a zero makes that split empty.
        seed: random seed of the shuffle.
        families: family label of each sample (needed for ``by="family"``).
        by: ``"random"`` (samples shuffled) or ``"family"``: whole families are assigned to one
            split each, greedily to the split furthest below its target size, so sizes match the
            fractions only as closely as family sizes allow.

    Returns:
        Three sorted integer arrays that partition ``range(n)``.
    """
    frac = np.asarray(fractions, dtype=float)
    if frac.shape != (3,) or (frac < 0).any() or abs(frac.sum() - 1.0) > 1e-6 or frac[0] <= 0:
        raise InputError(f"split fractions {tuple(fractions)}: expected three non-negative "
                         "numbers (train, val, test) summing to 1 with train > 0")
    rng = np.random.default_rng(seed)
    if by == "random":
        order = rng.permutation(n)
        n_val, n_test = int(round(frac[1] * n)), int(round(frac[2] * n))
        if n - n_val - n_test < 1:
            raise InputError(f"{n} samples are too few to split {tuple(fractions)}")
        val, test = order[:n_val], order[n_val:n_val + n_test]
        train = order[n_val + n_test:]
        return np.sort(train), np.sort(val), np.sort(test)
    if by != "family":
        raise InputError(f"split {by!r}: expected 'random' or 'family'")
    if families is None:
        raise InputError("split by family needs a family column (--family-column)")
    labels = np.asarray([str(f) for f in families])
    if labels.shape[0] != n:
        raise InputError(f"{labels.shape[0]} family labels for {n} samples")
    unique = np.unique(labels)
    needed = int((frac > 0).sum())
    if unique.size < needed:
        raise InputError(f"split by family needs at least {needed} families, found "
                         f"{unique.size} ({', '.join(unique[:5])})")
    unique = unique[rng.permutation(unique.size)]
    sizes = {u: int((labels == u).sum()) for u in unique}
    counts = np.zeros(3)
    assign: dict[str, int] = {}
    target = frac * n
    for fam in unique:
        # Relative deficit: every non-empty split gets a family before any gets a second one.
        deficit = np.where(frac > 0, (target - counts) / np.where(target > 0, target, 1), -np.inf)
        s = int(np.argmax(deficit))
        assign[fam] = s
        counts[s] += sizes[fam]
    which = np.array([assign[f] for f in labels])
    return tuple(np.flatnonzero(which == s) for s in range(3))  # type: ignore[return-value]
