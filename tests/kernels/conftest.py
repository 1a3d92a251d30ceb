"""Real GGUF tensors for the weight-kernel tests: SmolLM2 (the default model, fetched like the
model tests fetch it) and Gemma-3 270M Q4_K_M (the gemma_path fixture: NEXVK_GEMMA, fetched in CI)."""
from pathlib import Path

import numpy as np
import pytest

class Tensors:
    """name -> (type name, rows, cols, offset, bytes); raw(name, rows) reads with a plain file
    read. NOTE: gguf.GGUFReader takes ~50 s on Gemma's 262k-token vocabulary on this machine,
    so the header is walked here, skipping metadata values without building them."""

    def __init__(self, path):
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        self.path = Path(path)
        with open(path, "rb") as f:
            data = f.read(64 << 20)
        r = _Header(data)
        assert r.take(4) == b"GGUF" and r.u(4) >= 2
        n_tensors, n_kv = r.u(8), r.u(8)
        align = 32
        for _ in range(n_kv):
            key = r.string()
            value = r.value(r.u(4))
            align = int(value) if key == "general.alignment" else align
        infos = []
        for _ in range(n_tensors):
            name = r.string()
            dims = [r.u(8) for _ in range(r.u(4))]
            infos.append((name, GGMLQuantizationType(r.u(4)), dims, r.u(8)))
        base = -(-r.pos // align) * align
        self.info = {}
        for name, typ, dims, off in infos:
            block, size = GGML_QUANT_SIZES[typ]
            n = 1
            for d in dims:
                n *= d
            self.info[name] = (typ.name.lower(), n // dims[0], dims[0], base + off, n // block * size)

    def raw(self, name, rows=None):
        kind, r, c, off, n = self.info[name]
        n = n if rows is None else n // r * rows
        return np.fromfile(self.path, np.uint8, count=n, offset=off)

    def first_of_each_type(self):
        """One 2-D tensor of each type (the smallest), plus the embedding."""
        out = {}
        for name, (kind, r, c, _, n) in self.info.items():
            if r > 1 and (kind not in out or n < self.info[out[kind]][4]):
                out[kind] = name
        return sorted(set(out.values()) | {"token_embd.weight"})


class _Header:
    SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF scalar types

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u(self, n):
        return int.from_bytes(self.take(n), "little")

    def string(self):
        return self.take(self.u(8)).decode()

    def value(self, typ):
        if typ == 8:                                   # string
            return self.string()
        if typ == 9:                                   # array: element type, count, elements
            et, n = self.u(4), self.u(8)
            if et in self.SIZES:
                self.take(self.SIZES[et] * n)
            else:
                for _ in range(n):
                    self.value(et)
            return None
        return self.u(self.SIZES[typ])


@pytest.fixture(scope="session")
def smollm():
    from nexvk.model.fetch import fetch_default
    return Tensors(fetch_default(progress=False))


@pytest.fixture(scope="session")
def gemma(gemma_path):
    return Tensors(gemma_path)
