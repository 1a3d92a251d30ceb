"""The tokenizer rebuilt from GGUF metadata must round-trip any text and treat the control
tokens the way the model was trained (one id each)."""
from pathlib import Path

import numpy as np
import pytest

from nexvk.model.gguf import open_gguf
from nexvk.model.tokenizer import Tokenizer

TEXTS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "line one\nline two\n\n\tindented\r\nwindows line",
    "naïve café, Größe, 日本語のテキスト, emoji 🚀🤖 and a ZWJ family 👨‍👩‍👧",
    "numbers 1234567890 and 3.14159e-10",
    "code: def f(x):\n    return x ** 2  # comment",
    " = Robert Boulter = \n Robert Boulter is an English film , television and theatre actor .",
    "",
]


@pytest.fixture(scope="module")
def tok(model_path):
    return Tokenizer(open_gguf(model_path))


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.n_vocab for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens(tok):
    # SmolLM2's vocab: 0 <|endoftext|>, 1 <|im_start|>, 2 <|im_end|> (model card / tokenizer.json)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.encode("x", bos=True)[0] == 1
    assert 2 in tok.stop_ids


def test_digits_split_individually(tok):
    # SmolLM2's pre-tokenizer (tokenizer.ggml.pre = smollm) splits every digit
    assert len(tok.encode("12345")) == 5


def test_bpe_merges_words(tok):
    # common English words are single tokens; bytes alone would be 5+ tokens per word
    assert len(tok.encode("The quick brown fox")) == 4


class _SentencePieceFile:
    """The tokenizer.ggml.* metadata of a tiny SentencePiece vocabulary, as open_gguf gives it."""

    def __init__(self, pieces, add_space_prefix=False):
        specials = [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("\n\n", 4)]
        tokens = [t for t, _ in specials] + [f"<0x{b:02X}>" for b in range(256)]
        types = [ty for _, ty in specials] + [6] * 256
        scores = [0.0] * len(tokens)
        for text, score in pieces:
            tokens.append(text)
            types.append(1)
            scores.append(score)
        self.path = Path("tiny-spm.gguf")
        self._meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
                      "tokenizer.ggml.scores": np.array(scores, np.float32),
                      "tokenizer.ggml.token_type": np.array(types, np.int32),
                      "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                      "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
                      "tokenizer.ggml.add_space_prefix": add_space_prefix}

    def has(self, key):
        return key in self._meta

    def meta(self, key, default=None):
        return self._meta.get(key, default)

    strings = meta_array = meta

    def array_len(self, key):
        return len(self._meta[key])


BYTES = ["\n\n", "<0x78>", "<0xC3>", "<0xA9>"]  # '\n\n' whole, x and é as UTF-8 bytes


@pytest.mark.parametrize("ab,bc,want", [(-1.0, -2.0, ["\u2581", "ab", "c"]),
                                        (-2.0, -1.0, ["\u2581a", "bc"])])
def test_sentencepiece_joins_the_best_scoring_pair_first(ab, bc, want):
    """llama.cpp's SPM rule: of the adjacent pairs that form a token, join the one whose token
    scores highest, and repeat. '▁abc': ab first gives ▁|ab|c (no '▁ab', no 'abc'); bc first
    gives ▁a|bc ('▁a' at -3 still beats nothing)."""
    tok = Tokenizer(_SentencePieceFile([("a", -5.0), ("b", -5.0), ("c", -5.0), ("ab", ab),
                                        ("bc", bc), ("\u2581", -6.0), ("\u2581a", -3.0)]))
    ids = tok.encode(" abc\n\nxé")
    assert [tok.hf.id_to_token(i) for i in ids] == ["<s>"] + want + BYTES
    assert tok.decode(ids[1:]) == " abc\n\nxé"


def test_sentencepiece_space_prefix_and_byte_fallback():
    tok = Tokenizer(_SentencePieceFile([("a", -1.0), ("\u2581", -2.0), ("\u2581a", -0.5)],
                                       add_space_prefix=True))
    pieces = [tok.hf.id_to_token(i) for i in tok.encode("a é", bos=False)]
    assert pieces == ["\u2581a", "\u2581", "<0xC3>", "<0xA9>"]
    assert tok.decode(tok.encode("a é", bos=False)) == "a é"


@pytest.mark.parametrize("pieces,error", [
    ([("a" * k, -k) for k in range(1, 2001)], "pieces too long to index"),  # 2.4 MB as a GGUF
    # every a/b string of up to 11 characters: short pieces, but ~9 merges each
    ([(format(i, "b")[1:].replace("0", "a").replace("1", "b"), -1.0) for i in range(2, 1 << 12)],
     "ways to join two tokens"),
    ([("a", -1.0), ("a" * (1 << 20), -2.0)], "pieces too long to index"),
    ([("a", -1.0), ("b" * 3000, -2.0)] + [(f"p{i}", -3.0) for i in range(100)],
     "pieces too long to index")])
def test_sentencepiece_refuses_vocabularies_that_cost_more_than_their_size(pieces, error):
    """Every split of every piece was tried with no limit: the chain a, aa, ..., a x 2000
    took 3.7 GB and a Rust abort, one 1 MiB piece 155 s. Now the work is bounded by the
    vocabulary's size and such files are refused at once (the time is in docs/robustness.md)."""
    with pytest.raises(ValueError, match=error):
        Tokenizer(_SentencePieceFile(pieces))


def test_sentencepiece_keeps_long_control_tokens_and_refuses_huge_vocabularies(monkeypatch):
    # a control token is matched in the raw text, never split: its length costs nothing
    f = _SentencePieceFile([("a", -1.0)])
    f._meta["tokenizer.ggml.tokens"][1] = "<s" + "x" * 100000 + ">"
    assert Tokenizer(f).n_vocab == len(f._meta["tokenizer.ggml.tokens"])
    monkeypatch.setattr("nexvk.model.tokenizer.MAX_TOKENS", 200)
    with pytest.raises(ValueError, match="tokens in the vocabulary, over the 200"):
        Tokenizer(_SentencePieceFile([("a", -1.0)]))


def test_unknown_pre_tokenizer_is_an_error():
    """A byte-level BPE whose tokenizer.ggml.pre nexvk does not know is refused by name,
    never tokenized with another pre-tokenizer's rules."""
    from nexvk.model.tokenizer import _pre_tokenizer
    with pytest.raises(ValueError, match="pre-tokenizer 'deepseek-v3' is not supported"):
        _pre_tokenizer("deepseek-v3")
