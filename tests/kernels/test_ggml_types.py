"""The GGML type table: repack into device streams is lossless (bit-identical round trips on
the real tensors of both model files), costs no more bytes than the file, and fails clearly."""
import numpy as np
import pytest

from nexvk.kernels import ggml_types as gt

EMBD_ROWS = 8192  # of the embeddings, a slice keeps the test in seconds


def _round_trip(tensors, name):
    kind, rows, cols, _, _ = tensors.info[name]
    rows = min(rows, EMBD_ROWS) if name == "token_embd.weight" else rows
    raw = tensors.raw(name, rows)
    words = gt.repack(kind, raw, rows, cols)
    assert words.dtype == np.uint32 and words.size == gt.get(kind).words(rows, cols)
    back = gt.unpack(kind, words, rows, cols)
    assert np.array_equal(back.reshape(-1), raw), f"{name} ({kind}) did not round-trip"
    return kind, words.nbytes / raw.size


def test_smollm_tensors_round_trip(smollm):
    kinds = {_round_trip(smollm, n)[0] for n in smollm.first_of_each_type()}
    assert kinds == {"q4_1", "q8_0"}


def test_gemma_tensors_round_trip(gemma):
    kinds = {_round_trip(gemma, n)[0] for n in gemma.first_of_each_type()}
    assert kinds == {"q5_0", "q4_k", "q8_0", "q6_k"}


@pytest.mark.parametrize("kind", list(gt.TYPES))
def test_every_type_round_trips_and_costs_no_more_than_the_file(kind):
    wt = gt.get(kind)
    cols = 512 if wt.block == 256 else 96          # 96: an odd number of units per row
    raw = gt.random_bytes(kind, 7, cols, seed=3)
    words = gt.repack(kind, raw, 7, cols)
    assert np.array_equal(gt.unpack(kind, words, 7, cols).reshape(-1), raw)
    # the only padding: half a word per row for an odd unit count of the d-pair types and
    # two bytes per Q6_K block (its fp16 d takes a word)
    pad = 7 * 2 * (wt.group == 2 and cols // 32 % 2) + (7 * cols // 256 * 2 if kind == "q6_k" else 0)
    assert words.nbytes == raw.size + pad
    # the real shapes cost exactly the file's bytes, except Q6_K's worded d (+0.95%)
    big = wt.words(576, 1536 if wt.block == 32 else 2048) * 4 / wt.file_bytes(576, 1536 if wt.block == 32 else 2048)
    assert big == (1 + 2 / 210 if kind == "q6_k" else 1.0)


def test_streams_hold_the_values_where_the_shaders_read_them():
    """Q4_1 unit 1 of row 2: its nibbles in value order, then d|m, as weights_funcs.glsl reads."""
    raw = gt.random_bytes("q4_1", 3, 64, seed=1)
    words = gt.repack("q4_1", raw, 3, 64)
    w = gt.dequantize("q4_1", raw, 3, 64)
    h_off, s_off, _ = gt.get("q4_1").streams(3, 64)
    q = words[(2 * 2 + 1) * 4:(2 * 2 + 1) * 4 + 4]
    nib = ((q[:, None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(-1).astype(np.float32)
    d, m = words[s_off + 2 * 2 + 1:s_off + 2 * 2 + 2].view(np.float16).astype(np.float32)
    assert np.allclose(nib * d + m, w[2, 32:64], rtol=1e-6, atol=1e-7)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="q2_K|Q2_K"):
        gt.get(10)                                  # GGML Q2_K: not read by the kernels
    with pytest.raises(ValueError, match="not read"):
        gt.get("iq4_nl")
    with pytest.raises(ValueError, match="256-value blocks"):
        gt.repack("q4_k", np.zeros(144, np.uint8), 1, 200)
    with pytest.raises(ValueError, match="bytes in a GGUF"):
        gt.repack("q8_0", np.zeros(33, np.uint8), 1, 32)
    with pytest.raises(ValueError, match="device words"):
        gt.unpack("q8_0", np.zeros(5, np.uint32), 1, 32)


@pytest.mark.parametrize("which", ["smollm", "gemma"])
def test_the_tensor_table_tiles_the_file(request, which):
    """The header walk of conftest.Tensors: tensors lie back to back (up to alignment) and the
    last one ends at the end of the file, so every offset above is right."""
    t = request.getfixturevalue(which)
    spans = sorted((off, off + n) for _, _, _, off, n in t.info.values())
    assert all(b <= c < b + 32 for (_, b), (c, _) in zip(spans, spans[1:]))
    assert spans[-1][1] == t.path.stat().st_size
