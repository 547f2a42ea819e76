"""Hadamard matrices of every order our constructions reach.

n = m * 2^a with H_n = H_m (x) H_{2^a} (Kronecker), where 2^a is Sylvester's and m comes from Paley's
constructions over GF(q), q a prime power of degree <= 3:
  Paley I  (q = 3 mod 4): order q + 1      e.g. 12, 20, 28, 44, 60, 108, 140, 344 (q = 7^3)
  Paley II (q = 1 mod 4): order 2 (q + 1)  e.g. 12, 20, 28, 36, 52, 76, 100, 108
or from a Williamson array (williamson.py) where Paley has none: 156 = 4*39, 172 = 4*43.
The smallest such m is used, so 576 = 36*16, 1536 = 12*128, 11008 = 172*64, 14336 = 28*512.
"""
from __future__ import annotations

import functools
import itertools

import torch

from ..errors import MrgptqError
from .williamson import williamson


class RotationError(MrgptqError):
    """A rotation cannot be built for this dimension / block; the message says which ones can."""


MAX_PALEY = 2048  # largest Paley order we build (its Jacobsthal matrix is q x q)


def is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def sylvester(n: int) -> torch.Tensor:
    """Unnormalized +-1 Sylvester Hadamard of order 2^a (natural order), float64."""
    if not is_pow2(n):
        raise RotationError(f"Sylvester Hadamard needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _prime_power(q: int) -> tuple[int, int] | None:
    for p in range(2, q + 1):
        if q % p == 0:
            k, r = 0, q
            while r % p == 0:
                r //= p
                k += 1
            return (p, k) if r == 1 else None
    return None


def _gf_squares(p: int, k: int) -> list[bool]:
    """is_square[x] for GF(p^k), elements encoded as base-p digit vectors (ints); k <= 3."""
    q = p**k
    if k == 1:
        def mul(a, b):
            return a * b % p
    else:
        # monic irreducible of degree k (k <= 3: irreducible <=> no root in GF(p))
        for tail in itertools.product(range(p), repeat=k):
            coeffs = list(tail)  # x^k + c_{k-1} x^{k-1} + ... + c_0, tail = (c_0..c_{k-1})
            if all((pow(r, k, p) + sum(c * pow(r, i, p) for i, c in enumerate(coeffs))) % p for r in range(p)):
                break

        def digits(a):
            return [(a // p**i) % p for i in range(k)]

        def mul(a, b):
            da, db = digits(a), digits(b)
            prod = [0] * (2 * k - 1)
            for i, x in enumerate(da):
                for j, y in enumerate(db):
                    prod[i + j] = (prod[i + j] + x * y) % p
            for deg in range(2 * k - 2, k - 1, -1):  # reduce x^deg = -sum c_i x^(deg-k+i)
                c = prod[deg]
                if c:
                    prod[deg] = 0
                    for i, ci in enumerate(coeffs):
                        prod[deg - k + i] = (prod[deg - k + i] - c * ci) % p
            return sum(v * p**i for i, v in enumerate(prod[:k]))

    sq = [False] * q
    for x in range(1, q):
        sq[mul(x, x)] = True
    return sq


def _jacobsthal(q: int) -> torch.Tensor:
    p, k = _prime_power(q)
    sq = _gf_squares(p, k)
    # a - b in GF(p^k): digit-wise subtraction mod p
    a = torch.arange(q)
    diff = torch.zeros(q, q, dtype=torch.long)
    for i in range(k):
        da, db = (a // p**i) % p, (a // p**i) % p
        diff += ((da[:, None] - db[None, :]) % p) * p**i
    chi = torch.tensor([0.0] + [1.0 if sq[x] else -1.0 for x in range(1, q)], dtype=torch.float64)
    return chi[diff]


def _paley(m: int) -> torch.Tensor | None:
    """A +-1 Hadamard matrix of order m from Paley I or II, or None."""
    q = m - 1
    pk = _prime_power(q) if q > 2 else None
    if pk and pk[1] <= 3 and q % 4 == 3:
        Q = _jacobsthal(q)
        c = torch.zeros(m, m, dtype=torch.float64)
        c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, -1.0, Q
        return c + torch.eye(m, dtype=torch.float64)
    if m % 2 == 0:
        q = m // 2 - 1
        pk = _prime_power(q) if q > 2 else None
        if pk and pk[1] <= 3 and q % 4 == 1:
            Q = _jacobsthal(q)
            c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
            c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, Q
            a = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
            b = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
            return torch.kron(c, a) + torch.kron(torch.eye(q + 1, dtype=torch.float64), b)
    return None


@functools.lru_cache(maxsize=64)
def hadamard_factor(n: int) -> tuple[int, torch.Tensor]:
    """(m, H_m) with n = m * 2^a and H_m a +-1 Hadamard of order m from Paley or Williamson (m = 1 for
    powers of two)."""
    if is_pow2(n):
        return 1, torch.ones(1, 1, dtype=torch.float64)
    m = n // (n & -n)  # odd part, doubled until a construction exists
    while m <= min(n, MAX_PALEY):
        if m % 4 == 0:
            h = _paley(m)
            if h is None:
                h = williamson(m)
            if h is not None:
                return m, h
        m *= 2
    raise RotationError(
        f"no Hadamard matrix of order {n} from our constructions (powers of two times a Paley or Williamson "
        f"order such as 12, 20, 28, 36, 44, 52, 60, 108, 140, 156, 172, 344); use a block size that divides {n}, e.g. "
        f"{', '.join(str(b) for b in supported_blocks(n)) or 'a power of two'}"
    )


@functools.lru_cache(maxsize=16)
def _hadamard_pm1(n: int) -> torch.Tensor:
    m, hm = hadamard_factor(n)
    return torch.kron(hm, sylvester(n // m))


def supported_blocks(n: int, candidates=(16, 32, 64, 128, 256, 512)) -> list[int]:
    return [b for b in candidates if n % b == 0]


def hadamard(n: int) -> torch.Tensor:
    """Orthonormal Hadamard matrix H / sqrt(n) of order n, float64 (cached)."""
    if n < 1:
        raise RotationError(f"Hadamard order must be positive, got {n}")
    return _hadamard_pm1(n) / (n**0.5)


def has_hadamard(n: int) -> bool:
    try:
        hadamard_factor(n)
        return True
    except RotationError:
        return False


def fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Orthonormal fast Walsh-Hadamard transform over contiguous blocks of the last dim: O(n log b).

    Equal to x.view(..., n/b, b) @ sylvester(b) / sqrt(b) (Sylvester matrices are symmetric).
    """
    shape = x.shape
    y = x.reshape(-1, shape[-1] // block, block)
    h = 1
    while h < block:
        y = y.view(y.shape[0], y.shape[1], block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack([a + b, a - b], dim=-2)
        h *= 2
    return (y.reshape(shape) * (block**-0.5)).to(x.dtype)
