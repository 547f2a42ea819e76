"""Rotations: exact Hadamard orders, orthogonality, and function preservation when fused."""
import pytest
import torch
from conftest import student_t

from mrgptq.transforms import Rotation, RotationError, fwht, hadamard, has_hadamard
from mrgptq.transforms.hadamard import _hadamard_pm1, hadamard_factor, sylvester


@pytest.mark.parametrize("n", [12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 156, 172, 344, 576, 688, 1536, 2496])
def test_hadamard_orders_are_exact(n):
    H = _hadamard_pm1(n)
    assert set(H.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(H @ H.T, n * torch.eye(n, dtype=torch.float64))


@pytest.mark.parametrize("n", [11008, 14336])
def test_large_model_dims_factor_into_known_orders(n):
    m, hm = hadamard_factor(n)
    p = n // m
    assert m * p == n and p & (p - 1) == 0 and m == {11008: 172, 14336: 28}[n]  # 11008 = 172 * 64
    assert torch.equal(hm @ hm.T, m * torch.eye(m, dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25])
def test_williamson_search_finds_valid_quadruples(n):
    """The meet-in-the-middle search returns four symmetric sequences whose Williamson array is Hadamard."""
    from mrgptq.transforms.williamson import search, williamson_array

    quad = search(n)
    assert quad is not None
    for seq in quad:
        assert seq[0] == 1 and (seq[1:] == seq[1:][::-1]).all()  # symmetric, normalised
    H = williamson_array(*quad)
    assert torch.equal(H @ H.T, 4 * n * torch.eye(4 * n, dtype=torch.float64))


def test_williamson_search_is_exhaustive_where_none_exist():
    """Williamson matrices of order 35 do not exist (Djokovic 1993): the search must say so, not invent one."""
    from mrgptq.transforms.williamson import search

    assert search(35) is None


def test_stored_williamson_rows_are_what_search_spells():
    from mrgptq.transforms.williamson import FIRST_ROWS, williamson

    for n, rows in FIRST_ROWS.items():
        assert all(len(r) == (n + 1) // 2 and set(r) <= {"+", "-"} for r in rows)
        H = williamson(4 * n)
        assert torch.equal(H @ H.T, 4 * n * torch.eye(4 * n, dtype=torch.float64))


@pytest.mark.parametrize("dim", [624, 688])  # 156 * 4 and 172 * 4: full rotations through a Williamson factor
def test_williamson_full_rotation_preserves_the_layer(dim):
    W = student_t((24, dim), seed=dim)
    x = student_t((10, dim), seed=dim + 1)
    rot = Rotation(dim, "hadamard", None)
    y = rot.apply(x) @ rot.fuse(W).T
    ref = x @ W.T
    assert ((y - ref).norm() / ref.norm()).item() < 1e-5


def test_unreachable_order_names_working_blocks():
    assert not has_hadamard(944)  # 59 * 16: no Paley order divides it with a power-of-two cofactor
    with pytest.raises(RotationError, match="e.g. 16"):
        Rotation(944, "hadamard", None)
    assert Rotation(944, "hadamard", 16).size == 16
    with pytest.raises(RotationError, match="does not divide"):
        Rotation(576, "hadamard", 128)


@pytest.mark.parametrize("kind", ["hadamard", "dct", "dst", "gsr", "identity"])
@pytest.mark.parametrize("block", [16, 32, 128, None])
@pytest.mark.parametrize("signs", [False, True])
def test_fused_rotation_preserves_the_layer(kind, block, signs):
    dim = 1536 if block is not None or kind != "gsr" else 1024
    if kind == "gsr" and block is None:
        dim = 1024
    x, W = student_t((7, dim), seed=1), student_t((96, dim), seed=2)
    r = Rotation(dim, kind, block, signs, seed=5)
    y, y_rot = x @ W.T, r.apply(x) @ r.fuse(W).T
    assert ((y - y_rot).norm() / y.norm()).item() < 1e-5
    R = r.matrix()
    assert torch.allclose(R @ R.T, torch.eye(dim, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(r.apply(x.double()), x.double() @ R, atol=1e-10)


def test_fast_wht_matches_matrix_and_non_pow2_full_rotation():
    x = student_t((3, 4, 256), seed=3)
    want = (x.reshape(3, 4, 2, 128).double() @ (sylvester(128) / 128**0.5)).reshape(3, 4, 256)
    assert torch.allclose(fwht(x.double(), 128), want, atol=1e-12)
    y = student_t((2, 576), seed=4).double()
    assert torch.allclose(Rotation(576, "hadamard", None).apply(y), y @ hadamard(576), atol=1e-12)


def test_signs_are_seeded():
    a, b, c = (Rotation(64, "hadamard", 32, True, seed=s).sign_vector() for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
