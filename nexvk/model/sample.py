"""Next-token sampling with its own seeded RNG, so a seeded run repeats exactly.

temperature 0 is greedy (argmax); otherwise logits / temperature, then optional top-k, then
optional top-p (nucleus: the smallest set of tokens whose probability reaches top_p).
"""
import numpy as np


class Sampler:
    def __init__(self, temperature=0.0, top_k=0, top_p=1.0, seed=0):
        if not 0 <= temperature < np.inf:  # also false for NaN
            raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = all tokens), got {top_k!r}")
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits):
        """logits: (vocab,) float32 -> token id."""
        if self.temperature == 0.0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        idx = np.arange(z.size)
        if 0 < self.top_k < z.size:
            idx = np.argpartition(-z, self.top_k - 1)[:self.top_k]
        z = z[idx]
        order = np.argsort(-z, kind="stable")  # candidates by descending logit
        idx, z = idx[order], z[order]
        p = np.exp(z - z[0])
        p /= p.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p)) + 1
            idx, p = idx[:keep], p[:keep] / p[:keep].sum()
        return int(idx[self.rng.choice(p.size, p=p)])
