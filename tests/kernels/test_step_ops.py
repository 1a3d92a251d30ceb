"""rms_norm, rope, glu, add and upload_words on the device against their numpy twins, with
rows and T off the workgroup sizes, grouped norms, partial and NeoX rotation, accumulate."""
import numpy as np
import pytest

from nexvk.kernels import add, glu, rms_norm, rope
from nexvk.kernels.upload import download_words, release, upload_words

U2 = 2.0 ** -48


def nmse(got, want):
    assert np.isfinite(got).all()
    return float(((got - want) ** 2).sum() / max((want ** 2).sum(), 1e-30))


@pytest.mark.parametrize("n,group,T", [(576, None, 5), (1024, 256, 3), (640, 64, 9), (100, 20, 1)])
def test_rms_norm(device, rng, n, group, T):
    x = (rng.standard_normal((T, n)) * 3).astype(np.float32)
    w = rng.standard_normal(group or n).astype(np.float32)
    assert nmse(rms_norm.run(device, x, w, 1e-6, group), rms_norm.ref(x, w, 1e-6, group)) < 64 * U2
    y = rng.standard_normal((T, n)).astype(np.float32)
    assert nmse(rms_norm.run(device, x, w, 1e-5, group, y=y), rms_norm.ref(x, w, 1e-5, group, y=y)) < 64 * U2
    # last: row T-1 alone (the rows before it keep what y held)
    got = rms_norm.run(device, x, w, 1e-6, group, y=np.zeros_like(x), last=True)
    assert nmse(got[-1:], rms_norm.ref(x[-1:], w, 1e-6, group)) < 64 * U2
    assert not got[:-1].any()


@pytest.mark.parametrize("heads,head_dim,rot,neox", [(9, 64, 64, False), (4, 256, 256, True),
                                                     (3, 128, 64, False), (5, 64, 32, True)])
def test_rope(device, rng, heads, head_dim, rot, neox):
    tab = rope.table(10000.0 if head_dim < 256 else 1e6, rot, 700)
    x = rng.standard_normal((7, heads * head_dim)).astype(np.float32)
    got = rope.run(device, x, tab, 690, heads, head_dim, rot, neox)
    assert nmse(got, rope.ref(x, tab, 690, heads, head_dim, rot, neox)) < 4 * U2
    assert np.array_equal(got.reshape(7, heads, head_dim)[..., rot:],
                          x.reshape(7, heads, head_dim)[..., rot:])       # the rest untouched


@pytest.mark.parametrize("kind", ["silu", "gelu"])
def test_glu(device, rng, kind):
    g = (rng.standard_normal((5, 1000)) * 6).astype(np.float32)
    g[0, :4] = [-200, 200, 0, -1e-30]                               # no overflow at the ends
    u = rng.standard_normal((5, 1000)).astype(np.float32)
    assert nmse(glu.run(device, g, u, kind), glu.ref(g, u, kind)) < 1e-12


def test_rope_frequency_factors(device, rng):
    """Llama-3 / Phi-3 frequency divisors and LongRoPE's attention factor live in the table:
    the device rotates by it exactly as the twin does, and the table is what the factors say."""
    rot = 64
    factors = tuple(float(f) for f in 1 + 7 * rng.random(rot // 2))
    tab = rope.table(1e4, rot, 40, factors, mscale=1.25)
    inv = 1e4 ** (-np.arange(0, rot, 2) / rot) / np.array(factors)
    assert np.allclose(tab[39, :, 0], 1.25 * np.cos(39 * inv), atol=1e-6)
    x = rng.standard_normal((5, 2 * 128)).astype(np.float32)
    got = rope.run(device, x, tab, 30, 2, 128, rot, True)
    assert nmse(got, rope.ref(x, tab, 30, 2, 128, rot, True)) < 4 * U2
    with pytest.raises(ValueError, match="32 positive finite"):
        rope.table(1e4, rot, 4, (0.0,) * 32)


def test_add(device, rng):
    x, y = rng.standard_normal((2, 3, 577)).astype(np.float32)
    assert np.array_equal(add.run(device, x, y), add.ref(x, y))


def test_add_bias_row(device, rng):
    """One row b added to every row (a projection's bias): each row gets exactly b."""
    x = rng.standard_normal((4, 577)).astype(np.float32)
    b = rng.standard_normal(577).astype(np.float32)
    got = add.run(device, x, b)
    assert np.array_equal(got, add.ref(x, b))
    assert np.array_equal(got[3], x[3] + b)


def test_upload_words_lands_at_the_offset(device, monkeypatch, rng):
    """Through several staging chunks (a small chunk forces three) into a host-visible
    buffer we can read back; the words around the target stay as they were."""
    import nexvk.kernels.upload as up
    monkeypatch.setattr(up, "CHUNK", 1024)
    device.release("upload/")
    dst = device.pool.get("test/upload", 5000, np.uint32, kind="device")
    dst.host[:] = 0xDEADBEEF
    device.run([dst])
    words = rng.integers(0, 2**32, 2500, dtype=np.uint32)
    upload_words(device, dst, 1001, words)
    device.run(downloads=[dst])
    want = np.full(5000, 0xDEADBEEF, np.uint32)
    want[1001:3501] = words
    assert np.array_equal(dst.host, want)
    with pytest.raises(ValueError, match="overflows"):
        upload_words(device, dst, 4000, words)
    release(device)
    device.release("test/")


def test_download_words_reads_a_storage_buffer(device, monkeypatch, rng):
    """Words uploaded into a device-only buffer come back from any offset, through several
    staging chunks, equal to the numpy twin's slice."""
    import nexvk.kernels.upload as up
    monkeypatch.setattr(up, "CHUNK", 1024)
    device.release("upload/")
    src = device.pool.get("test/storage", 5000, np.uint32)
    words = rng.integers(0, 2**32, 5000, dtype=np.uint32)
    upload_words(device, src, 0, words)
    assert np.array_equal(download_words(device, src, 777, 2500), words[777:3277])
    assert np.array_equal(download_words(device, src, 0, 5000), words)
    assert download_words(device, src, 10, 0).size == 0
    with pytest.raises(ValueError, match="overflows"):
        download_words(device, src, 4000, 1001)
    release(device)
    device.release("test/")


def test_bad_shapes_are_named(device):
    buf = device.pool.get("test/small", 16, np.float32, kind="device")
    with pytest.raises(ValueError, match="group 7 does not divide"):
        rms_norm.dispatches(device, buf, buf, buf, buf, 16, 1, 1e-6, group=7)
    with pytest.raises(ValueError, match="rope x"):
        rope.dispatches(device, buf, buf, buf, 2, 64, 64, 10, 1)
    with pytest.raises(ValueError, match="unknown activation"):
        glu.dispatches(device, buf, buf, buf, 8, 1, kind="relu")
    with pytest.raises(ValueError, match="outside a table"):
        rope.run(device, np.zeros((3, 64), np.float32), rope.table(1e4, 64, 4), 2, 1, 64, 64)
    device.release("test/")
