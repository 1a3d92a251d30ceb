"""Sixteen b-bit codes -> their sixteen centroids in one table lookup (turbo2/3/4 rows).

A turbo row decoded one code (or two, from a pair table) at a time is scalar work that
costs more than converting f16 halves, which LLVM vectorizes. Here 16 consecutive codes
(2b bytes) are read with one 8-byte load, split into 16 lanes by per-lane shifts, and
looked up in the (at most 16-entry) centroid table held in one register: AVX-512's
vpermps. numba cannot say a variable permute, so this is an intrinsic that writes the
LLVM IR. Where the CPU lacks AVX-512 it writes a portable lookup (one extract per lane; on
this AVX-512 machine LLVM turns even that into vpermd, elsewhere it is not measured), and
the kernels keep the scalar pair-table path there (`available`). Twin: ref.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

from nexvk.quant import pack

AVX512 = bool(llvm.get_host_cpu_features().get("avx512f", False))
_I8, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
_V16I, _V16F = ir.VectorType(_I32, 16), ir.VectorType(_F32, 16)
_PERM = "llvm.x86.avx512.permvar.sf.512"


def available(bits, head_dim):
    """Whether decode16 serves a turbo format of these bits at this head_dim (fast)."""
    return AVX512 and bits in (2, 3, 4) and head_dim % 16 == 0


def _splat(builder, x):
    undef = ir.Constant(_V16I, ir.Undefined)
    one = builder.insert_element(undef, x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(_V16I, [0] * 16))


def _lookup(builder, table, idx):
    if AVX512:
        fn = builder.module.globals.get(_PERM) or ir.Function(
            builder.module, ir.FunctionType(_V16F, [_V16F, _V16I]), _PERM)
        return builder.call(fn, [table, idx])
    out = ir.Constant(_V16F, ir.Undefined)
    for lane in range(16):
        k = ir.Constant(_I32, lane)
        out = builder.insert_element(
            out, builder.extract_element(table, builder.extract_element(idx, k)), k)
    return out


@intrinsic
def decode16(typingctx, bits, src, off, sh, table, dst, doff):
    """dst[doff:doff + 16] := table[c] for the 16 bits-bit codes c that start at bit sh of
    byte off of src, a C-contiguous uint8 array (code l at bits [bits * l, bits * l + bits)
    of the little-endian stream from there). It reads the 8 bytes src.flat[off:off + 8]:
    near the end of a row, pass the 8 bytes that end the row and sh = 8 * (bytes skipped).
    bits: a literal 2, 3 or 4; table: float32, 16 entries; dst: float32, C-contiguous."""
    if not isinstance(bits, types.IntegerLiteral) or bits.literal_value not in (2, 3, 4) \
            or src.layout != "C" or dst.layout != "C":
        return None
    b = bits.literal_value
    hi = 16 * (b - 2)   # lanes whose code crosses bit 32 read the window shifted down by hi
    use_hi = [b * lane + b > 32 for lane in range(16)]
    shifts = [b * lane - hi if u else b * lane for lane, u in enumerate(use_hi)]

    def codegen(context, builder, sig, args):
        _, s, o, sh, t, d, do = args
        src_a = context.make_array(sig.args[1])(context, builder, s)
        tab_a = context.make_array(sig.args[4])(context, builder, t)
        dst_a = context.make_array(sig.args[5])(context, builder, d)
        p = builder.gep(builder.bitcast(src_a.data, _I8.as_pointer()),
                        [context.cast(builder, o, sig.args[2], types.int64)])
        w = builder.load(builder.bitcast(p, _I64.as_pointer()), align=1)
        w = builder.lshr(w, context.cast(builder, sh, sig.args[3], types.uint64))
        lo = _splat(builder, builder.trunc(w, _I32))
        up = _splat(builder, builder.trunc(builder.lshr(w, ir.Constant(_I64, hi)), _I32))
        v = builder.select(ir.Constant(ir.VectorType(ir.IntType(1), 16), use_hi), up, lo)
        v = builder.lshr(v, ir.Constant(_V16I, shifts))
        v = builder.and_(v, ir.Constant(_V16I, [(1 << b) - 1] * 16))
        table = builder.load(builder.bitcast(tab_a.data, _V16F.as_pointer()), align=4)
        q = builder.gep(dst_a.data, [context.cast(builder, do, sig.args[6], types.int64)])
        builder.store(_lookup(builder, table, v), builder.bitcast(q, _V16F.as_pointer()), align=4)
        return context.get_dummy_value()
    return types.none(bits, src, off, sh, table, dst, doff), codegen


@njit(cache=True, inline="always")
def decode_row(bits, src, base, rb, table, dst, doff, d):
    """dst[doff:doff + d] := table[c] for the d codes (a multiple of 16) of the rb-byte row
    (rb >= 8) that starts at byte base of src (C-contiguous uint8, e.g. a cache's codes
    flattened); dst: float32, C-contiguous."""
    for m in range(d // 16):
        o = 2 * bits * m
        o2 = min(o, rb - 8)   # the last block of a row: the 8 bytes that end the row
        if bits == 3:
            decode16(3, src, base + o2, 8 * (o - o2), table, dst, doff + 16 * m)
        elif bits == 2:
            decode16(2, src, base + o2, 8 * (o - o2), table, dst, doff + 16 * m)
        else:
            decode16(4, src, base + o2, 8 * (o - o2), table, dst, doff + 16 * m)


@njit(cache=True)
def run(bits, codes, table, out):
    """out (n, d) := every row of codes (n, bytes) decoded (decode_row, for the tests)."""
    n, d = out.shape
    src, dst = codes.reshape(-1), out.reshape(-1)
    for r in range(n):
        decode_row(bits, src, r * codes.shape[1], codes.shape[1], table, dst, r * d, d)


def ref(bits, words, table, head_dim):
    """The numpy twin: words (n, words_per_vector) uint32 -> table[codes] (n, head_dim)."""
    return table[pack.unpack(words, bits, head_dim)]
