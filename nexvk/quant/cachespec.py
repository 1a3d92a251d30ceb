"""What a KV cache stores, layer by layer, whatever the backend: CacheSpec.

- Formats per layer: k_types[layer], v_types[layer] (one pair for every layer unless
  `layer_types` overrides some, e.g. "0-1:q8_0/q8_0,29:turbo4/turbo3").
- Sinks: the first `sinks` positions of every layer are stored as float16 vectors in the
  layer's compute domain (rotated, after the key transform) instead of codes. They draw a
  large share of the attention weight and their error costs the most.
- Key transform (nexvk.quant.transform): on every layer whose keys are a turbo format,
  keys are centred per KV head before the rotation and (scaled=True) their channels
  weighted by how much the queries read them.

"Hardened" (the default) turns sinks and the key transform on for caches that hold a turbo
format; `plain=True` gives the plain TurboQuant algorithm (codes identical to the codec's).
The defaults come from measurements (docs/hardening.md, tools/harden_probe.py).
"""
import re
from dataclasses import dataclass

from nexvk.quant.formats import REGISTRY, Turbo, make

DEFAULT_SINKS = 1  # SmolLM2 wikitext-2 4x512: 0 -> KLD 0.153, 1 -> 0.096, 4 -> 0.103 (first:128)


def parse_layer_types(spec, n_layers):
    """'0-1:q8_0/q8_0,29:turbo4/turbo3' (or a dict {layer: (k, v)}) -> {layer: (k, v)}."""
    if isinstance(spec, dict):
        items = spec.items()
    else:
        items = []
        for part in filter(None, (p.strip() for p in str(spec).split(","))):
            m = re.fullmatch(r"(\d+)(?:-(\d+))?:(\w+)/(\w+)", part)
            if not m:
                raise ValueError(f"bad layer type {part!r}: write LAYER[-LAST]:K/V, e.g. "
                                 "0-1:q8_0/q8_0")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise ValueError(f"bad layer range {part!r}: the last layer comes before the first")
            if hi >= n_layers:  # before the range is expanded: 0-100000000 took 3.75 GB
                raise ValueError(f"layer types name layer {hi}; this cache has layers "
                                 f"0..{n_layers - 1}")
            items += [(layer, (m.group(3), m.group(4))) for layer in range(lo, hi + 1)]
    out = {}
    for layer, kv in items:
        if not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise ValueError(f"layer types name layer {layer!r}; this cache has layers "
                             f"0..{n_layers - 1}")
        k, v = kv
        for f in (k, v):
            if f not in REGISTRY:
                raise ValueError(f"unknown KV format {f!r} for layer {layer}; supported: "
                                 f"{', '.join(REGISTRY)}")
        out[layer] = (k, v)
    return out


def format_layer_types(k_types, v_types, k_type, v_type):
    """The inverse of parse_layer_types for the layers that differ from (k_type, v_type)."""
    parts, layer, n = [], 0, len(k_types)
    while layer < n:
        pair = (k_types[layer], v_types[layer])
        end = layer
        while end + 1 < n and (k_types[end + 1], v_types[end + 1]) == pair:
            end += 1
        if pair != (k_type, v_type):
            rng = f"{layer}" if end == layer else f"{layer}-{end}"
            parts.append(f"{rng}:{pair[0]}/{pair[1]}")
        layer = end + 1
    return ",".join(parts)


def is_turbo(name):
    return issubclass(REGISTRY[name], Turbo)


@dataclass(frozen=True)
class CacheSpec:
    k_type: str            # the formats of every layer not named in layer_types
    v_type: str
    k_types: tuple         # per layer
    v_types: tuple
    sinks: int             # first positions of every layer kept as float16
    plain: bool
    scaled: bool           # transformed layers also hold a channel scale table

    @classmethod
    def build(cls, n_layers, k_type="turbo3", v_type="turbo3", layer_types=None, sinks=None,
              plain=False, scaled=None):
        for f in (k_type, v_type):
            if f not in REGISTRY:
                raise ValueError(f"unknown KV format {f!r}; supported: {', '.join(REGISTRY)}")
        per = parse_layer_types(layer_types or {}, n_layers)
        k_types = tuple(per.get(i, (k_type, v_type))[0] for i in range(n_layers))
        v_types = tuple(per.get(i, (k_type, v_type))[1] for i in range(n_layers))
        any_turbo = any(is_turbo(f) for f in k_types + v_types)
        if sinks is None:
            sinks = DEFAULT_SINKS if any_turbo and not plain else 0
        if not isinstance(sinks, int) or isinstance(sinks, bool) or sinks < 0:
            raise ValueError(f"sinks must be a number of positions >= 0, got {sinks!r}")
        if plain and sinks:
            raise ValueError("plain=True is the plain algorithm: it keeps no sink tokens "
                             f"(got sinks={sinks})")
        if plain and scaled:
            raise ValueError("plain=True is the plain algorithm: it has no key scale")
        scaled = not plain if scaled is None else bool(scaled)
        return cls(k_type, v_type, k_types, v_types, int(sinks), bool(plain), scaled)

    @property
    def n_layers(self):
        return len(self.k_types)

    def transformed(self, layer):
        """Whether the layer's keys go through the key transform (hardened turbo keys)."""
        return not self.plain and is_turbo(self.k_types[layer])

    def transform_vectors(self, layer):
        """float16 vectors of head_dim the key transform stores per KV head of the layer."""
        return int(self.transformed(layer)) * (1 + int(self.scaled))

    def layer_bytes(self, layer, head_dim, head_dim_v, tokens, sinks=None):
        """Bytes one KV head of `layer` holds for `tokens` positions, K and V (part_bytes).
        sinks: this layer's sink count (default: the spec's; a sliding-window layer keeps
        none)."""
        s = self.sinks if sinks is None else sinks
        return (self.part_bytes(self.k_types[layer], head_dim, tokens, s, key=True)
                + self.part_bytes(self.v_types[layer], head_dim_v, tokens, s, key=False))

    def part_bytes(self, fmt, head_dim, tokens, sinks, key):
        """Bytes one KV head's K (key=True) or V in format `fmt` holds for `tokens` positions:
        codes and scales of the positions after the sinks, float16 sink vectors, and for
        hardened turbo keys the transform's float16 mean (and scale) with the sinks' raw
        float32 keys (kept to re-encode them when the mean is fitted after they were stored)."""
        s = min(sinks, tokens)
        xf = key and not self.plain and is_turbo(fmt)   # as transformed() for a layer
        return ((tokens - s) * make(fmt, head_dim).bytes_per_vector() + 2 * s * head_dim
                + xf * (4 * s * head_dim + 2 * head_dim * (1 + int(self.scaled))))

    @property
    def label(self):
        """'turbo3/turbo3', plus ' (plain)' or the layers that differ."""
        extra = format_layer_types(self.k_types, self.v_types, self.k_type, self.v_type)
        return f"{self.k_type}/{self.v_type}" + (f" [{extra}]" if extra else "") + \
            (" plain" if self.plain else "")

    def describe(self):
        """One line: formats, per-layer overrides, sinks and key transform."""
        parts = [self.label]
        if not self.plain:
            n_t = sum(self.transformed(i) for i in range(self.n_layers))
            if n_t:
                what = "centred and scaled" if self.scaled else "centred"
                parts.append(f"keys {what} on {n_t}/{self.n_layers} layers")
            if self.sinks:
                parts.append(f"first {self.sinks} position{'s' * (self.sinks > 1)} in f16")
        return ", ".join(parts)
