"""Every cpu kernel against its numpy twin, with odd sizes: rows not a multiple of the 64-row
chunk, token counts and widths not a multiple of any SIMD width, every weight type."""
import numpy as np
import pytest

from nexvk.cpu import add, get_rows, glu, mul_mm, mul_mv, rms_norm, rope
from nexvk.cpu.weights import R, CpuWeight
from nexvk.kernels import ggml_types

TYPES = list(ggml_types.TYPES)


def weight(kind, rows, cols, seed=0):
    raw = ggml_types.random_bytes(kind, rows, cols, seed)
    return CpuWeight.from_bytes(kind, raw, rows, cols), ggml_types.dequantize(kind, raw, rows, cols)


def rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("rows,cols", [(1, 256), (67, 256), (2 * R + 3, 512)])
def test_repack_is_lossless(kind, rows, cols):
    """The chunked layout gives gguf's dequantized values exactly (and pads with zeros)."""
    w, want = weight(kind, rows, cols)
    np.testing.assert_array_equal(w.dequantize(), want)
    assert w.q.shape[0] == -(-rows // R)
    assert not w.q[-1, ..., rows % R or R:].any()


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("threads", [1, 2])
def test_mul_mv_matches_its_twin(rng, kind, threads):
    rows, cols = 3 * R + 5, 768       # 4 chunks, the last one short; 24 sub-blocks
    w, wf = weight(kind, rows, cols, 1)
    x = rng.standard_normal(cols).astype(np.float32)
    y = np.full(rows + 3, 7, np.float32)  # rows past the weight's stay untouched
    mul_mv.run(w, x, y, threads=threads)
    assert rel(y[:rows], mul_mv.ref(wf, x)) < 1e-5
    assert (y[rows:] == 7).all()
    y0 = y[:rows].copy()
    mul_mv.run(w, x, y, add=True, threads=threads)
    assert rel(y[:rows], mul_mv.ref(wf, x, y0)) < 1e-5


def test_mul_mv_threads_split_a_large_product(rng):
    """Above SERIAL_BYTES the chunks go to the threads; every row is still written once."""
    rows, cols = 17 * R + 1, 8192
    w, wf = weight("q8_0", rows, cols, 2)
    assert w.q.nbytes >= mul_mv.SERIAL_BYTES
    x = rng.standard_normal(cols).astype(np.float32)
    for threads in (1, 2, 3):
        y = mul_mv.run(w, x, np.zeros(rows, np.float32), threads=threads)
        assert rel(y, mul_mv.ref(wf, x)) < 1e-5


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("panel_rows,parts", [(None, 1), (R, 1), (R, 2), (2 * R, 3)])
def test_mul_mm_matches_its_twin(rng, kind, panel_rows, parts):
    """Panels of one chunk or more, the chunks split over 1-3 workers of a pool."""
    from concurrent.futures import ThreadPoolExecutor
    rows, cols, T = 3 * R + 7, 512, 13
    w, wf = weight(kind, rows, cols, 3)
    x = rng.standard_normal((T, cols)).astype(np.float32)
    panels = None if panel_rows is None else \
        [np.empty(panel_rows * cols, np.float32) for _ in range(parts)]
    with ThreadPoolExecutor(parts) as pool:
        y = np.zeros((T, rows), np.float32)
        mul_mm.run(w, x, y, panels=panels, pool=pool)
        assert rel(y, mul_mm.ref(wf, x)) < 1e-5
        y0 = y.copy()
        mul_mm.run(w, x, y, add=True, panels=panels, pool=pool)
        assert rel(y, mul_mm.ref(wf, x, y0)) < 1e-5


@pytest.mark.parametrize("kind", TYPES)
def test_get_rows_matches_its_twin(kind):
    rows, cols = 2 * R + 5, 256
    w, wf = weight(kind, rows, cols, 4)
    ids = np.array([0, rows - 1, 64, 63, 5, 5, 130], np.int32)
    out = np.full((9, cols), 3, np.float32)
    get_rows.run(w, ids, 7, out, scale=1.5)
    np.testing.assert_allclose(out[:7], get_rows.ref(wf, ids, 1.5), rtol=1e-6)
    assert (out[7:] == 3).all()


@pytest.mark.parametrize("group", [0, 24])
def test_rms_norm_matches_its_twin(rng, group):
    x = rng.standard_normal((5, 72)).astype(np.float32)
    w = rng.standard_normal(group or 72).astype(np.float32)
    y = np.full_like(x, 9)
    rms_norm.run(x, w, 1e-6, 3, y, group)
    np.testing.assert_allclose(y[:3], rms_norm.ref(x[:3], w, 1e-6, group or None), rtol=1e-5,
                               atol=1e-6)
    assert (y[3:] == 9).all()
    rms_norm.run(x, w, 1e-6, 5, x, group)   # in place
    np.testing.assert_allclose(x[:3], y[:3], rtol=1e-6)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("rot", [40, 18])
def test_rope_matches_its_twin(rng, neox, rot):
    heads, hd, T, pos = 3, 40, 5, 11
    tab = rope.table(10000.0, rot, 32)
    cos, sin = np.ascontiguousarray(tab[..., 0]), np.ascontiguousarray(tab[..., 1])
    x = rng.standard_normal((T + 2, heads * hd)).astype(np.float32)
    want = rope.ref(x[:T], tab, pos, heads, hd, rot, neox)
    tail = x[T:].copy()
    rope.run(x, cos, sin, pos, T, hd, rot, neox)
    np.testing.assert_allclose(x[:T], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x[T:], tail)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_glu_matches_its_twin(rng, act):
    gate = (4 * rng.standard_normal((4, 77))).astype(np.float32)
    up = rng.standard_normal((4, 77)).astype(np.float32)
    out = np.full_like(gate, 5)
    glu.run(gate, up, 3, act, out)
    np.testing.assert_allclose(out[:3], glu.ref(gate[:3], up[:3], act.split("_")[0]),
                               rtol=1e-5, atol=1e-6)
    assert (out[3:] == 5).all()
    with pytest.raises(ValueError, match="unknown activation"):
        glu.run(gate, up, 3, "relu", out)


def test_add_matches_its_twin(rng):
    x = rng.standard_normal((4, 37)).astype(np.float32)
    y = rng.standard_normal((4, 37)).astype(np.float32)
    want = add.ref(x[:3], y[:3])
    tail = x[3:].copy()
    add.run(x, y, 3)
    np.testing.assert_array_equal(x[:3], want)
    np.testing.assert_array_equal(x[3:], tail)
