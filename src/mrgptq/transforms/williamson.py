"""Williamson Hadamard matrices: order 4n from four symmetric circulant +-1 matrices A, B, C, D of order n.

If A^2 + B^2 + C^2 + D^2 = 4n I (symmetric circulants commute), the Williamson array

    [ A  B  C  D]
    [-B  A -D  C]
    [-C  D  A -B]
    [-D -C  B  A]

is a Hadamard matrix of order 4n. This reaches orders that Paley's constructions miss, such as
156 = 4*39 and 172 = 4*43 (11008 = 172*64 in Llama-2-7B's MLP).

`search(n)` finds a quadruple by meet-in-the-middle over symmetric sequences (the method of Holzmann,
Kharaghani and Tayfeh-Rezaie): with first entries +1, every sequence's row sum s is = n (mod 4)
(Williamson's lemma), so 4n = a^2 + b^2 + c^2 + d^2 fixes the four sum classes; a pair (A, B) must
meet a pair (C, D) with PAF_A + PAF_B = -(PAF_C + PAF_D) at every shift, and the power spectra bound
each pair (PSD_A + PSD_B <= 4n at every frequency). A is taken up to the multipliers of Z_n.
`FIRST_ROWS` holds quadruples that `search` found (2-core CPU: n = 39 in ~3 min, n = 43 in ~25 min; reproduce
with `halves_as_text(search(43))`); tests rebuild them and check H H^T = 4n I.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

# First halves (entries 0..(n-1)/2) of A, B, C, D; the rest mirrors (x_j = x_{n-j}). '+' = 1, '-' = -1.
FIRST_ROWS: dict[int, tuple[str, str, str, str]] = {
    39: ("+-++------++--+-+-++", "+---+--++++----+-+-+", "++--+++-+--++-+-----", "+---+---+-++-++----+"),
    43: ("++---+-+--++--+---++++", "+------++-+---++++-++-", "+----++++-+--+--+-+--+", "+-++++--++--+-+-+-++++"),
}


def _mirror(half: np.ndarray) -> np.ndarray:
    """Full symmetric sequences of odd length n from entries 0..(n-1)/2 (last axis): x_j = x_{n-j}."""
    return np.concatenate([half, half[..., 1:][..., ::-1]], -1)


def _circulant(row: np.ndarray) -> torch.Tensor:
    n = len(row)
    idx = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n
    return torch.tensor(row[idx], dtype=torch.float64)


def williamson_array(a, b, c, d) -> torch.Tensor:
    """Hadamard matrix of order 4n from four symmetric +-1 first rows of length n (float64)."""
    A, B, C, D = (_circulant(np.asarray(r, dtype=np.float64)) for r in (a, b, c, d))
    return torch.cat([
        torch.cat([A, B, C, D], 1),
        torch.cat([-B, A, -D, C], 1),
        torch.cat([-C, D, A, -B], 1),
        torch.cat([-D, -C, B, A], 1),
    ], 0)


def williamson(order: int) -> torch.Tensor | None:
    """The stored Williamson Hadamard matrix of this order, or None."""
    if order % 4 or order // 4 not in FIRST_ROWS:
        return None
    n = order // 4
    rows = [_mirror(np.array([1.0 if ch == "+" else -1.0 for ch in s])) for s in FIRST_ROWS[n]]
    return williamson_array(*rows)


def _four_odd_squares(total: int) -> list[tuple[int, int, int, int]]:
    odd = range(1, math.isqrt(total) + 1, 2)
    return sorted({tuple(sorted(t)) for t in itertools.product(odd, repeat=4) if sum(v * v for v in t) == total})


def _canonical_under_multipliers(half: np.ndarray, n: int) -> np.ndarray:
    """Mask of sequences that are the smallest (as a bit pattern) in their multiplier orbit j -> u*j mod n."""
    m = half.shape[1] - 1
    weights = 1 << np.arange(m, dtype=np.int64)
    code = ((1 - half[:, 1:]) // 2).astype(np.int64) @ weights
    best = code.copy()
    for u in range(2, n):
        if math.gcd(u, n) != 1:
            continue
        perm = np.array([min(u * j % n, n - u * j % n) for j in range(1, m + 1)])  # position j <- u*j
        moved = ((1 - half[:, perm]) // 2).astype(np.int64) @ weights
        best = np.minimum(best, moved)
    return best == code


def search(n: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Four symmetric +-1 sequences of odd length n whose circulants satisfy A^2+B^2+C^2+D^2 = 4n I."""
    if n % 2 == 0 or n < 3:
        raise ValueError(f"search handles odd n >= 3, got {n}")
    m = (n - 1) // 2
    bits = (np.arange(1 << m)[:, None] >> np.arange(m)) & 1
    half = np.concatenate([np.ones((1 << m, 1), np.int64), 1 - 2 * bits], 1)  # x_0 = +1
    full = _mirror(half)  # length n
    sums = full.sum(1)
    # spectrum at k = 1..m (real: symmetric) and periodic autocorrelation at shifts 1..m
    cos = np.cos(2 * np.pi * np.outer(np.arange(n), np.arange(1, m + 1)) / n)
    psd = ((full @ cos) ** 2).astype(np.float32)
    paf = np.stack([(full * np.roll(full, -s, axis=1)).sum(1) for s in range(1, m + 1)], 1).astype(np.int16)
    bound = 4 * n + 1e-6
    keep = (psd <= bound).all(1)
    canon = _canonical_under_multipliers(half, n)

    def cls(s, canonical=False):
        mask = keep & (sums == s) & (canon if canonical else True)
        return np.nonzero(mask)[0]

    # PAF vectors compared through a linear hash, so a pair's key is the sum of its members' keys
    rng = np.random.default_rng(0)
    weights = rng.integers(1, 2**62, size=m, dtype=np.int64)
    key = (paf.astype(np.int64) * weights).sum(1)  # wraps mod 2^64, harmlessly

    def pairs(ia, ib):
        """Yield (i, j) index arrays of pairs whose joint spectrum stays within 4n, chunk by chunk."""
        for start in range(0, len(ia), chunk):
            a = ia[start:start + chunk]
            ok = np.ones((len(a), len(ib)), dtype=bool)
            for k in range(m):  # one frequency at a time keeps memory at chunk x |ib|
                ok &= psd[a, k][:, None] + psd[ib, k][None, :] <= bound
            i, j = np.nonzero(ok)
            yield a[i], ib[j]

    for squares in _four_odd_squares(4 * n):
        # the sign of each row sum is fixed by s = n (mod 4) when x_0 = +1
        a, b, c, d = (v if v % 4 == n % 4 else -v for v in squares)
        ia, ib, ic, id_ = cls(a, canonical=True), cls(b), cls(c), cls(d)
        if min(len(ia), len(ib), len(ic), len(id_)) == 0:
            continue
        # table: the (A, B) pairs (A up to multipliers, so the smaller side), sorted by key
        found = [(i, j) for i, j in pairs(ia, ib)]
        ti = np.concatenate([f[0] for f in found]).astype(np.int32)
        tj = np.concatenate([f[1] for f in found]).astype(np.int32)
        tkey = key[ti] + key[tj]
        order = np.argsort(tkey, kind="stable")
        ti, tj, tkey = ti[order], tj[order], tkey[order]
        for ci, di in pairs(ic, id_):  # stream the (C, D) pairs: PAF_C + PAF_D = -(PAF_A + PAF_B)
            want = -(key[ci] + key[di])
            pos = np.searchsorted(tkey, want)
            hit = np.nonzero((pos < len(tkey)) & (tkey[np.minimum(pos, len(tkey) - 1)] == want))[0]
            for h in hit:
                p = pos[h]
                while p < len(tkey) and tkey[p] == want[h]:
                    A, B, C, D = full[ti[p]], full[tj[p]], full[ci[h]], full[di[h]]
                    if not (paf[ti[p]] + paf[tj[p]] + paf[ci[h]] + paf[di[h]]).any():  # exact, not a collision
                        return A, B, C, D
                    p += 1
    return None


def halves_as_text(quad) -> tuple[str, ...]:
    """The FIRST_ROWS spelling of a quadruple found by `search`."""
    m = (len(quad[0]) - 1) // 2
    return tuple("".join("+" if v > 0 else "-" for v in seq[: m + 1]) for seq in quad)
