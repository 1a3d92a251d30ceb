"""The Vulkan Ops: forward.py's calls recorded into one device graph per step shape.

Where NumpyOps executes each call, VulkanOps records it: `execute(key, record)` runs record()
(the forward) once per key to record every dispatch of the step into a Graph, then replays it
(one queue submission) on every step of that shape. Only the step's words go up (T, the start
position and the token ids, in the step's own Dyn buffer, which every kernel reads) and only
the handles allocated readable come down (the logits).

A handle is an `Act`: (rows, cols) float32 activations at a float offset of an arena buffer,
or a last_row() view (the step's row T-1). The handles allocated before a graph is first
recorded share one arena (a State's handles, so that e.g. a product can write q|k|v or gate|up
side by side); readable ones get buffers of their own. Weights stay in their GGUF formats on
the device (nexvk/kernels/weights.py); the KV cache's kernels write the cache and attend.
"""
import itertools
import weakref

import numpy as np

from nexvk.kernels import add, dyn as dyn_words, get_rows, ggml_types, glu, mul_mm, mul_mv
from nexvk.kernels import rms_norm, rope
from nexvk.kernels.upload import upload_words
from nexvk.kernels.weights import DeviceWeight, WeightArenas

_ids = itertools.count()
_ACT = {"silu": "silu", "gelu_tanh": "gelu"}


class Arena:
    """Handles' words reserved before the buffer exists; the buffer is made on first use."""

    def __init__(self, ops):
        self.ops, self.words, self._buf = ops, 0, None

    def reserve(self, n):
        if self._buf is not None:
            raise RuntimeError("this arena's buffer exists already")
        off, self.words = self.words, self.words + n
        return off

    @property
    def buf(self):
        if self._buf is None:
            self._buf = self.ops.dev.pool.get(f"{self.ops.tag}arena{next(self.ops._names)}",
                                              self.words, np.float32)
        return self._buf


class Act:
    """(rows, cols) float32 at float offset `off` of `where` (an Arena or a Buffer); `last`:
    a view of the step's row T-1 alone."""

    def __init__(self, where, off, rows, cols, last=False):
        self.where, self.off, self.rows, self.cols, self.last = where, off, rows, cols, last

    @property
    def buf(self):
        w = self.where
        return w.buf if isinstance(w, Arena) else w

    @property
    def nbytes(self):
        return 4 * self.rows * self.cols


class VulkanOps:
    def __init__(self, cache, sparse_v=None):
        self.cache, self.sparse_v = cache, sparse_v
        self.store = store = cache.store
        self.dev = store.dev
        self.tag = f"ops{next(_ids)}/"
        # the step's words (nexvk/kernels/dyn.py), read by every kernel of the step
        self.dyn = self.dev.pool.get(self.tag + "dyn", dyn_words.size(cache.layout.max_batch),
                                     np.uint32, kind="device")
        self._graphs = {}
        self._tables = {}                # (base, rot) -> RoPE (cos, sin) table buffer
        self._names = itertools.count()
        self._arena = Arena(self)
        self._readable = []              # readable buffers of the graph being recorded
        self.T, self.pos = 0, 0
        self._g = None                   # the graph being recorded
        weakref.finalize(self, self.dev.release, self.tag, self._graphs)

    # ---- buffers and per-step values -----------------------------------------------------
    def alloc(self, shape, dtype="float32", readable=False):
        """A handle of shape (rows, features...); token ids (int32) live in the dyn buffer.
        readable: the host reads it after a step (the graph downloads it)."""
        rows, cols = int(shape[0]), int(np.prod(shape[1:], dtype=np.int64))
        if dtype == "int32":
            if dyn_words.size(rows) > self.dyn.size:
                raise ValueError(f"{rows} token ids do not fit the step's dyn buffer "
                                 f"({self.dyn.size - dyn_words.IDS} ids): raise max_batch")
            return Act(self.dyn, dyn_words.IDS, rows, 1)
        if readable:
            buf = self.dev.pool.get(f"{self.tag}out{next(self._names)}", rows * cols,
                                    np.float32, kind="device")
            return Act(buf, 0, rows, cols)
        if self._arena._buf is not None:   # a State made after a graph: a new arena
            self._arena = Arena(self)
        return Act(self._arena, self._arena.reserve(rows * cols), rows, cols)

    def set_step(self, tokens_handle, tokens, pos):
        """The next step: T = len(tokens) ids at positions pos..pos+T-1."""
        self.T, self.pos = len(tokens), int(pos)
        dyn_words.fill(self.dyn.host, self.T, self.pos, tokens, sparse_v=self.sparse_v or 0.0)
        self.store.stats.host[:] = 0

    def record(self, key, record):
        """The graph of step shape `key`, recorded by calling record() (the forward) once."""
        g = self._graphs.get(key)
        if g is None:
            self._g, self._readable = self.dev.graph().upload(self.dyn, self.store.stats), []
            try:
                record()
                g = self._g.download(self.store.stats, *self._readable).prepare()
            finally:
                self._g = None
            self._graphs[key] = g
        return g

    def execute(self, key, record):
        """Run the step: one submission of its graph (recorded on first use). The KV cache
        counts the step's tokens first."""
        g = self.record(key, record)
        self.cache.advance(self.pos, self.T)
        g.run()
        self.store.check_scores()
        skipped, total = (int(n) for n in self.store.stats.host[:2])
        self.cache.stats = {"skipped": skipped, "total": total,
                            "skip_rate": skipped / total if total else 0.0}

    def read(self, x, n=None):
        """Rows 0..n-1 of a readable handle after the step (default: the step's rows)."""
        n = min(self.T, x.rows) if n is None else n
        return x.buf.host[: n * x.cols].reshape(n, x.cols)

    def last_row(self, x):
        return Act(x.where, x.off, 1, x.cols, last=True)

    # ---- recording -------------------------------------------------------------------------
    def _dispatch(self, pairs):
        for pipe, push in pairs:
            self._g.dispatch(pipe, push)

    def _out(self, x):
        """x's buffer, to be written; a readable one comes down after the step."""
        b = x.buf
        if b.kind == "device" and b not in self._readable:
            self._readable.append(b)
        return b

    # ---- ops -----------------------------------------------------------------------------
    def embed(self, table, tokens, out, scale=1.0):
        self._dispatch(get_rows.dispatches(self.dev, table, self._out(out), self.dyn, out.rows,
                                           o_off=out.off, scale=scale))

    def rms_norm(self, x, w, eps, out, group=0):
        self._dispatch(rms_norm.dispatches(self.dev, x.buf, w.buf, self._out(out), self.dyn,
                                           x.cols, x.rows, eps, group or None, x_off=x.off,
                                           w_off=w.off, y_off=out.off, last=x.last))

    def linear(self, x, w, out, accumulate=False, bias=None):
        if x.rows == 1:
            pairs = mul_mv.dispatches(self.dev, w, x.buf, self._out(out), self.dyn, x_off=x.off,
                                      y_off=out.off, acc=accumulate, last=x.last)
        else:
            pairs = mul_mm.dispatches(self.dev, w, x.buf, self._out(out), self.dyn, x.rows,
                                      x_off=x.off, y_off=out.off, acc=accumulate)
        self._dispatch(pairs)
        if bias is not None:  # the bias row added to every row of the product
            self._dispatch(add.dispatches(self.dev, self._out(out), bias.buf, self.dyn, out.cols,
                                          x.rows, x_off=out.off, y_off=bias.off, bcast=True))

    def rope(self, x, head_dim, rot_dims, base, neox, factors=None, mscale=1.0):
        tab = self._table(base, rot_dims, factors, mscale)
        self._dispatch(rope.dispatches(self.dev, x.buf, tab, self.dyn, x.cols // head_dim,
                                       head_dim, rot_dims, self.cache.capacity, x.rows, neox,
                                       x_off=x.off))

    def _table(self, base, rot, factors, mscale):
        key = (float(base), int(rot), factors, float(mscale))
        if key not in self._tables:
            t = rope.table(key[0], rot, self.cache.capacity, factors, mscale)  # (ctx, rot/2, 2)
            buf = self.dev.pool.get(f"{self.tag}rope{len(self._tables)}", t.size)
            upload_words(self.dev, buf, 0, t.reshape(-1).view(np.uint32))
            self._tables[key] = buf
        return self._tables[key]

    def glu(self, gate, up, out, act):
        if gate.where is not up.where:
            raise ValueError("glu reads gate and up from one buffer (allocate them together)")
        self._dispatch(glu.dispatches(self.dev, gate.buf, self._out(out), self.dyn, gate.cols,
                                      gate.rows, _ACT[act], x_off=gate.off, o_off=out.off,
                                      ldx=gate.cols, up=up.off - gate.off))

    def add(self, x, y):
        self._dispatch(add.dispatches(self.dev, x.buf, y.buf, self.dyn, x.cols, x.rows,
                                      x_off=x.off, y_off=y.off))

    def attention(self, layer, q, k, v, out, head_dim, scale):
        words = self.dyn.host[dyn_words.SCALE:dyn_words.SCALE + 1].view(np.float32)
        if self._graphs and words[0] != np.float32(scale):
            raise ValueError("every layer must use the same attention scale on the device")
        words[0] = scale  # kept in the dyn words of every later step
        # raw keys and queries: the store fits and applies the hardened key transform
        n_heads = q.cols // head_dim
        self.store.record_append(self._g, self.dyn, layer, k.buf, v.buf, q.rows, k.off, v.off, q.buf,
                                 q.off, n_heads)
        self.store.record_attention(self._g, self.dyn, layer, q.buf, self._out(out), q.rows, n_heads,
                                    q.off, out.off, raw_q=True)


def weight_loader(dev, g, tag, refs):
    """loader(ref) for Weights.load: the GGUF tensor (or a fused tensor's rows) on the device
    as stored, a DeviceWeight for matrices (any GGML type the kernels read) and float32 words
    for vectors (norm weights and biases, stored F32), all placed in shared buffers
    (WeightArenas) planned from `refs` (every weights.Ref that will be loaded)."""
    arenas = WeightArenas(dev, tag)
    for r in refs:
        t = g.tensors.get(r.name)
        if t is None:
            raise ValueError(f"{g.path.name}: missing tensor '{r.name}'")
        got = tuple(int(n) for n in reversed(t.shape))
        if got != r.file_shape:
            raise ValueError(f"{g.path.name}: {r.name} has shape {got}, metadata implies "
                             f"{r.file_shape}")
        if len(r.shape) == 1:
            arenas.place(r.key, r.shape[0], 1)
        else:
            arenas.place(r.key, ggml_types.get(t.tensor_type).words(1, r.shape[1]), r.shape[0])

    def load(r):
        parts = arenas.parts(r.key)
        if len(r.shape) == 1:
            vec = np.ascontiguousarray(g.tensor(r.name).reshape(-1), np.float32)
            upload_words(dev, parts[0].buffer, parts[0].w_off, vec.view(np.uint32))
            return Act(parts[0].buffer, parts[0].w_off, 1, r.shape[0])
        t = g.tensors[r.name]
        wt = ggml_types.get(t.tensor_type)
        # a fused tensor's rows r0.. start r0 whole rows into its stored bytes
        offset = int(t.data_offset) + r.row0 * wt.file_bytes(1, r.shape[1])
        return DeviceWeight.from_file(dev, f"{tag}{r.key}", g.path, offset, t.tensor_type,
                                      *r.shape, parts=parts)
    return load


_weight_ids = itertools.count()


def load_weights(g, a, device=None, progress=False):
    """The model's Weights on the device: the GGUF blocks as stored in device buffers
    (weight_loader), freed with the Weights object."""
    from nexvk.device.manager import get_device
    from nexvk.kernels import upload
    from nexvk.model.weights import Weights, model_refs
    dev = get_device(device)
    tag = f"weights{next(_weight_ids)}/"
    with dev.lock:  # one upload at a time: they share the device's staging buffer
        try:
            w = Weights.load(g, a, progress=progress,
                             loader=weight_loader(dev, g, tag, model_refs(a, g)))
        except BaseException:
            dev.release(tag)
            raise
        finally:
            upload.release(dev)  # the staging buffer and copy pipeline
    weakref.finalize(w, dev.release, tag)
    return w
