"""The tokenizer rebuilt from GGUF metadata must round-trip any text and treat the control
tokens the way the model was trained (one id each)."""
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


def test_chat_template(tok):
    s = tok.chat("Hi")
    assert s.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
