"""The Vulkan codec: quantize.comp / dequantize.comp in fixed-size chunks of rows.

A codec's staging buffers are shared by its calls, so each call holds the device lock from
the first upload to the last download: codecs (and caches) are safe to use from threads.
"""
import itertools
import weakref

import numpy as np

from nexvk.device.manager import get_device
from nexvk.kernels import layout
from nexvk.quant import Codec

_ids = itertools.count()


class VulkanCodec(Codec):
    """Same interface and results as the numpy Codec; buffers are allocated once per codec."""

    backend = "vulkan"

    def __init__(self, name, head_dim, seed=0, device=None, chunk=None):
        super().__init__(name, head_dim, seed)
        self.device = get_device(device)
        fmt = self.format
        d = self.head_dim
        self.chunk = chunk or max(1, min(self.device.max_groups, (16 << 20) // d))  # <= 64 MiB
        tag = f"codec{next(_ids)}/"
        pool = self.device.pool
        weakref.finalize(self, self.device.release, tag)
        with self.device.lock:  # the pool and pipeline cache are shared with other threads
            self._x = pool.get(tag + "x", self.chunk * d, np.float32, kind="device")
            self._kv = pool.get(tag + "kv", layout.region_words(fmt, self.chunk), np.uint32,
                                kind="device")
            self._y = pool.get(tag + "y", self.chunk * d, np.float32, kind="device")
            self._tab = pool.get(tag + "tab", layout.TAB_SIGNS + d, np.float32, kind="device")
            self._dyn = pool.get(tag + "dyn", 2, np.uint32, kind="device")  # [rows, first vector]
            self._tab.host[:] = layout.table(fmt)
            self.device.run(uploads=[self._tab])
            spec = [layout.WG, d, *layout.spec(fmt)]
            bufs = [self._tab, self._dyn]
            self._enc = self.device.pipeline("quantize", [self._x, self._kv, *bufs], self.chunk,
                                             spec)
            self._dec = self.device.pipeline("dequantize", [self._kv, self._y, *bufs], self.chunk,
                                             spec)
        self._sbase = self.chunk * fmt.words

    def _encode_rows(self, flat):
        fmt, d = self.format, self.head_dim
        n = len(flat)
        codes = np.empty((n, fmt.words), np.uint32)
        scales = np.empty((n, fmt.n_scales), np.float16)
        with self.device.lock:
            for s in range(0, n, self.chunk):
                m = min(self.chunk, n - s)
                self._x.host[: m * d] = flat[s:s + m].reshape(-1)
                self._dyn.host[:] = (m, 0)
                self.device.run([self._x, self._dyn],
                                [(self._enc, layout.quantize_push(0, self._sbase, 0))], [self._kv])
                c, sc = self._chunk_views(m)
                codes[s:s + m], scales[s:s + m] = c, sc
        return codes, scales

    def _decode_rows(self, codes, scales):
        d = self.head_dim
        n = len(codes)
        out = np.empty((n, d), np.float32)
        with self.device.lock:
            for s in range(0, n, self.chunk):
                m = min(self.chunk, n - s)
                c, sc = self._chunk_views(m)
                c[:] = codes[s:s + m]
                sc[:] = scales[s:s + m]
                self._dyn.host[:] = (m, 0)
                self.device.run([self._kv, self._dyn], [(self._dec, [0, self._sbase, 0])],
                                [self._y])
                out[s:s + m] = self._y.host[: m * d].reshape(m, d)
        return out

    def _chunk_views(self, m):
        """Views of the first m vectors' codes and scales inside the staging region."""
        fmt = self.format
        codes = self._kv.host[: self.chunk * fmt.words].reshape(self.chunk, fmt.words)[:m]
        halves = self._kv.host[self._sbase:].view(np.float16)
        scales = halves[: self.chunk * fmt.n_scales].reshape(self.chunk, fmt.n_scales)[:m]
        return codes, scales
