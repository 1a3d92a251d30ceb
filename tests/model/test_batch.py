"""Several sequences in one decode step (nexvk/model/batch.py): each gets the logits it gets
alone, whatever the other rows hold; bad steps are refused and change no cache."""
import numpy as np
import pytest

from nexvk.model.batch import Batch
from nexvk.model.model import Model

PROMPTS = ([5, 9, 13], [7, 2, 30, 41, 11, 3, 8, 21, 17, 4, 6], [12])  # three lengths


def _alone(base, prompt, steps):
    """Logits of prompt's last token then of `steps` greedy tokens, one sequence alone."""
    m = base.with_cache()
    out = [m.forward(prompt, 0, last_only=True)[0].copy()]
    for _ in range(steps):
        out.append(m.forward([int(np.argmax(out[-1]))], m.pos)[0].copy())
    return out


@pytest.mark.parametrize("arch,fmt", [("llama", "turbo3"), ("gemma3", "turbo3"), ("llama", "f16")])
def test_batched_decode_matches_each_sequence_alone(tiny, arch, fmt):
    # gemma3: q/k norms, post norms and a sliding window of 8 that the long prompt passes
    base = Model.load(tiny(arch=arch), ctx=32, k_type=fmt, v_type=fmt)
    steps = 6
    want = [_alone(base, p, steps) for p in PROMPTS]
    seqs = [base.with_cache() for _ in PROMPTS]
    batch = Batch(base, 4)
    logits = [s.forward(p, 0, last_only=True)[0].copy() for s, p in zip(seqs, PROMPTS)]
    for t in range(steps):
        nxt = [int(np.argmax(row)) for row in logits]
        logits = batch.step(seqs, nxt).copy()
        for i in range(len(seqs)):
            np.testing.assert_allclose(logits[i], want[i][t + 1], rtol=1e-5, atol=1e-5)
    assert [s.pos for s in seqs] == [len(p) + steps for p in PROMPTS]


def test_any_subset_in_any_order(tiny):
    base = Model.load(tiny(), ctx=32, k_type="turbo3", v_type="turbo3")
    seqs = [base.with_cache() for _ in PROMPTS]
    for s, p in zip(seqs, PROMPTS):
        s.forward(p, 0)
    got = Batch(base, 3).step([seqs[2], seqs[0]], [1, 2]).copy()
    for i, (p, t) in enumerate(((PROMPTS[2], 1), (PROMPTS[0], 2))):
        alone = base.with_cache()
        alone.forward(p, 0)  # the key statistics are fitted on the prompt, as above
        np.testing.assert_allclose(got[i], alone.forward([t], len(p))[0], rtol=1e-5, atol=1e-5)
    assert [s.pos for s in seqs] == [4, 11, 2]


def test_bad_steps_are_refused_and_change_nothing(tiny):
    base = Model.load(tiny(), ctx=8, k_type="turbo3", v_type="turbo3")
    s1, s2 = base.with_cache(), base.with_cache()
    s1.forward([1, 2, 3], 0)
    s2.forward([4, 5, 6, 7, 8, 9, 10], 0)
    batch = Batch(base, 2)
    other = Model.load(tiny(), ctx=8)
    cases = [([s1, s2, s1], [1, 2, 3], "one token for each of 1..2"),
             ([s1], [1, 2], "one token for each"),
             ([s1, s1], [1, 2], "its own cache"),
             ([s1, other], [1, 2], "share the batch model's weights"),
             ([s1, s2], [1, base.arch.vocab_size], "token ids must be in")]
    for seqs, toks, msg in cases:
        with pytest.raises(ValueError, match=msg):
            batch.step(seqs, toks)
    batch.step([s1, s2], [1, 2])  # s2 now holds all 8 positions
    with pytest.raises(ValueError, match="exceed the context of 8"):
        batch.step([s1, s2], [3, 4])
    assert (s1.pos, s1.cache.length(0), s2.pos, s2.cache.length(1)) == (4, 4, 8, 8)


@pytest.mark.device
def test_vulkan_batch_steps_each_sequence_in_turn(tiny, device):
    """On vulkan a batch step runs one device step per sequence (the step's dynamic words
    hold one position): the same logits as each sequence alone."""
    base = Model.load(tiny(), ctx=32, k_type="turbo3", v_type="turbo3", backend="vulkan",
                      device=device)
    seqs = [base.with_cache() for _ in PROMPTS[:2]]
    for s, p in zip(seqs, PROMPTS):
        s.forward(p, 0)
    got = Batch(base, 2).step(seqs, [3, 4])
    for i, (p, t) in enumerate(zip(PROMPTS, (3, 4))):
        alone = base.with_cache()
        alone.forward(p, 0)
        np.testing.assert_allclose(got[i], alone.forward([t], len(p))[0], rtol=1e-5, atol=1e-5)
    assert [s.pos for s in seqs] == [len(PROMPTS[0]) + 1, len(PROMPTS[1]) + 1]
