"""A GGML weight on the device: its rows split into parts that each fit one storage buffer.

Lavapipe binds at most 128 MiB per storage buffer, so a 178 MB embedding (Gemma-3's Q8_0
262144 x 640) is two parts; the products and get_rows dispatch once per part, each covering
its rows. Bytes reach the device row chunk by row chunk (read, repack, upload), so loading a
weight never holds more than one chunk on the host.
"""
from dataclasses import dataclass

import numpy as np

from nexvk.kernels import ggml_types
from nexvk.kernels.upload import upload_words

CHUNK_BYTES = 16 << 20   # raw bytes repacked per upload step


@dataclass
class Part:
    row0: int            # first row of the weight held here
    rows: int
    buffer: object       # device Buffer (uint32 storage)
    w_off: int = 0       # word offset of this part's streams in the buffer


class DeviceWeight:
    """(rows, cols) of GGML type `wtype` in device buffers, as `parts`."""

    def __init__(self, wtype, rows, cols, parts):
        self.wtype, self.rows, self.cols, self.parts = ggml_types.get(wtype), rows, cols, parts

    @property
    def nbytes(self):
        return sum(self.wtype.words(p.rows, self.cols) * 4 for p in self.parts)

    def __repr__(self):
        return (f"DeviceWeight({self.wtype.name}, {self.rows} x {self.cols}, "
                f"{len(self.parts)} part(s), {self.nbytes / 2**20:.1f} MiB)")

    @classmethod
    def upload(cls, dev, name, kind, rows, cols, read_rows, max_rows=None):
        """Upload through `read_rows(r0, r1)` -> raw GGUF bytes of rows r0..r1-1, into storage
        buffers named `name`/<part>. `max_rows` caps a part (default: the buffer limit)."""
        wt = ggml_types.get(kind)
        per_row = wt.words(1, cols) * 4
        fit = dev.max_buffer_bytes // per_row
        if fit < 1:
            raise ValueError(f"{name}: one row of {cols} {wt.name} values ({per_row} bytes) "
                             f"exceeds {dev.name}'s {dev.max_buffer_bytes} bytes per buffer")
        step = max(1, min(fit, max_rows or fit))
        parts = []
        for r0 in range(0, rows, step):
            n = min(step, rows - r0)
            buf = dev.pool.get(f"{name}/{len(parts)}", wt.words(n, cols), np.uint32, kind="storage")
            parts.append(Part(r0, n, buf))
            h_off, s_off, _ = wt.streams(n, cols)
            qpr, hpr = wt.streams(1, cols)[:2]              # q and h words per row
            spr = wt.words(1, cols) - hpr                    # s words per row
            hpr -= qpr
            chunk = max(1, CHUNK_BYTES // wt.file_bytes(1, cols))
            for a in range(0, n, chunk):
                b = min(n, a + chunk)
                q, h, s = ggml_types.split(wt, read_rows(r0 + a, r0 + b), b - a, cols)
                upload_words(dev, buf, a * qpr, q)
                upload_words(dev, buf, h_off + a * hpr, h)
                upload_words(dev, buf, s_off + a * spr, s)
        return cls(wt, rows, cols, parts)

    @classmethod
    def from_bytes(cls, dev, name, kind, raw, rows, cols, max_rows=None):
        """From the raw GGUF bytes of the whole tensor."""
        wt = ggml_types.get(kind)
        raw = np.asarray(raw, np.uint8).reshape(-1)
        if raw.size != wt.file_bytes(rows, cols):
            raise ValueError(f"{name}: {wt.name} ({rows}, {cols}) is {wt.file_bytes(rows, cols)} "
                             f"bytes, got {raw.size}")
        rb = wt.file_bytes(1, cols)
        return cls.upload(dev, name, wt, rows, cols, lambda a, b: raw[a * rb:b * rb], max_rows)

    @classmethod
    def from_file(cls, dev, name, path, offset, kind, rows, cols, max_rows=None):
        """From a tensor stored at byte `offset` of a GGUF file, read with plain file reads."""
        wt = ggml_types.get(kind)
        rb = wt.file_bytes(1, cols)

        def read(a, b):
            got = np.fromfile(path, np.uint8, count=(b - a) * rb, offset=offset + a * rb)
            if got.size != (b - a) * rb:
                raise ValueError(f"{path}: tensor {name} is cut short (rows {a}..{b})")
            return got
        return cls.upload(dev, name, wt, rows, cols, read, max_rows)
