"""The model's own tokenizer, rebuilt from the GGUF's tokenizer.ggml.* metadata.

Two vocabulary kinds, each rebuilt as a HuggingFace `tokenizers.Tokenizer`:
- byte-level BPE (`tokenizer.ggml.model == "gpt2"`): token list, merge list and a pre-tokenizer
  name (`tokenizer.ggml.pre`): pre-tokenizer chosen from the name (the regexes llama.cpp uses
  for each), BPE model, byte-level decoder.
- SentencePiece (`"llama"`: llama 1/2, gemma): token list, scores and byte-fallback tokens
  `<0xXX>`, no merge list. llama.cpp's SPM tokenizer repeatedly joins the adjacent pair whose
  concatenation is the highest-scoring token; a BPE whose merges are every split of every token
  into two tokens, ranked by the joined token's score, does the same. Spaces become "▁" (and
  one is prepended when tokenizer.ggml.add_space_prefix says so, llama.cpp's default).
In both, control and user-defined tokens become added tokens matched in the raw text first, so
`<|im_start|>` or Gemma's "\n\n" maps to its single id.
"""
import threading

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers as pt

from nexvk.model.chat import ChatTemplate

# token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MAX_TOKENS = 1 << 20   # the largest vocabularies in use hold 262,144 tokens (Gemma-3)
SPM_SPLIT_CHARS = 32   # see _spm_merges
SPM_MERGES = 8

# end-of-turn tokens of the common chat formats (ChatML, Gemma, Llama 3, Phi-3)
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
           r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|"
          r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre):
    """The pre-tokenizer for a tokenizer.ggml.pre name (as in llama.cpp's llama-vocab.cpp)."""
    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2 regex
    if pre in (None, "default", "gpt-2", "gpt2", "olmo", "jais"):
        return byte_level
    if pre in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"):
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    split = {"llama-bpe": _LLAMA3, "llama3": _LLAMA3, "qwen2": _QWEN2}.get(pre)
    if split is None:
        raise ValueError(f"tokenizer pre-tokenizer '{pre}' is not supported (supported: "
                         "gpt-2, smollm, starcoder, llama-bpe, qwen2 and aliases)")
    return pt.Sequence([pt.Split(Regex(split), behavior="isolated"),
                        pt.ByteLevel(add_prefix_space=False, use_regex=False)])


def _token_id(g, which, n_vocab):
    """tokenizer.ggml.<which>_token_id as an int in [0, n_vocab), or None when absent."""
    key = f"tokenizer.ggml.{which}_token_id"
    v = g.meta(key, None)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_vocab:
        raise ValueError(f"{g.path.name}: {key} must be a token id in [0, {n_vocab}), "
                         f"got {str(v)[:40]}")
    return v


def _byte_level_bpe(g, vocab):
    merges = []
    for i, m in enumerate(g.strings("tokenizer.ggml.merges")):
        a, space, b = m.partition(" ")
        if not (a and space and b):
            raise ValueError(f"{g.path.name}: BPE merge {i} ({m[:40]!r}) is not two tokens "
                             "separated by a space")
        merges.append((a, b))
    tok = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
    pre = g.meta("tokenizer.ggml.pre", None)
    if pre is not None and not isinstance(pre, str):
        raise ValueError(f"{g.path.name}: tokenizer.ggml.pre must be a string")
    tok.pre_tokenizer = _pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()
    return tok


def _spm_merges(g, vocab, tokens, types, scores):
    """Every split of every piece into two tokens, as (left, right) pairs ranked by the joined
    piece's score (ties: lower id, then shorter left part). Control and user-defined tokens
    are left out: they are matched in the raw text before the model sees it, so no merge
    could ever produce them.
    The work is bounded by the vocabulary's own size, so a crafted file (pieces a, aa, ...,
    a x 2000, or one piece of a million characters) is refused at once instead of taking
    gigabytes and minutes: the splits tried (sum of len * (len - 1) characters) at most
    SPM_SPLIT_CHARS per character of the pieces, the merges found at most SPM_MERGES per
    piece. Gemma-3's 262k-token vocabulary needs 6.3 and 2.0."""
    pieces = [i for i, ty in enumerate(types) if ty not in (CONTROL, USER_DEFINED)]
    chars = sum(len(tokens[i]) for i in pieces)
    work = sum(len(tokens[i]) * (len(tokens[i]) - 1) for i in pieces)
    if work > SPM_SPLIT_CHARS * chars + (1 << 20):
        longest = max(len(tokens[i]) for i in pieces)
        raise ValueError(f"{g.path.name}: SentencePiece pieces too long to index (their splits "
                         f"are {work / max(chars, 1):.0f} characters per character, at most "
                         f"{SPM_SPLIT_CHARS} accepted; the longest piece has {longest})")
    limit = SPM_MERGES * len(pieces) + 1024
    left, right, joined = [], [], []
    for i in pieces:
        t = tokens[i]
        for cut in range(1, len(t)):
            a, b = vocab.get(t[:cut]), vocab.get(t[cut:])
            if a is not None and b is not None:
                left.append(a)
                right.append(b)
                joined.append(i)
        if len(joined) > limit:
            raise ValueError(f"{g.path.name}: SentencePiece vocabulary has over {limit} ways to "
                             f"join two tokens into one ({SPM_MERGES} per piece accepted)")
    joined = np.asarray(joined, np.int64)
    order = np.lexsort((np.arange(joined.size), joined, -scores[joined]))
    return [(tokens[left[k]], tokens[right[k]]) for k in order.tolist()]


def _sentencepiece(g, vocab, tokens, types):
    try:
        scores = np.asarray(g.meta_array("tokenizer.ggml.scores"), np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{g.path.name}: tokenizer.ggml.scores must be a numeric array") from None
    if len(scores) != len(tokens):
        raise ValueError(f"{g.path.name}: {len(scores)} tokenizer scores for {len(tokens)} tokens")
    merges = _spm_merges(g, vocab, tokens, types, scores)
    unk = _token_id(g, "unknown", len(tokens))
    tok = HFTokenizer(models.BPE(vocab, merges, byte_fallback=True,
                                 unk_token=tokens[unk] if unk is not None else None))
    escape = [normalizers.Replace(" ", "\u2581")]
    unescape = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if g.meta("tokenizer.ggml.add_space_prefix", True):
        escape.insert(0, normalizers.Prepend("\u2581"))
        unescape.append(decoders.Strip(" ", 1, 0))
    tok.normalizer = normalizers.Sequence(escape)
    tok.decoder = decoders.Sequence(unescape)
    return tok


class Tokenizer:
    """encode(text) -> list[int], decode(ids) -> str, bos/eos/stop ids, and the chat template:
    render_chat(messages) -> str, encode_chat(messages) -> list[int]."""

    def __init__(self, g):
        model = g.meta("tokenizer.ggml.model", None)
        if model not in ("gpt2", "llama"):
            raise ValueError(f"{g.path.name}: tokenizer model '{model}' is not supported "
                             "(byte-level BPE 'gpt2' or SentencePiece 'llama')")
        n = g.array_len("tokenizer.ggml.tokens")
        if n > MAX_TOKENS:
            raise ValueError(f"{g.path.name}: {n} tokens in the vocabulary, over the {MAX_TOKENS} "
                             "nexvk accepts")
        tokens = g.strings("tokenizer.ggml.tokens")
        types = (g.meta_array("tokenizer.ggml.token_type").tolist()
                 if g.has("tokenizer.ggml.token_type") else [NORMAL] * len(tokens))
        if len(types) != len(tokens):
            raise ValueError(f"{g.path.name}: {len(types)} token types for {len(tokens)} tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        try:
            tok = (_byte_level_bpe(g, vocab) if model == "gpt2"
                   else _sentencepiece(g, vocab, tokens, types))
        except ValueError:
            raise
        except Exception as e:  # tokenizers raises a bare Exception (e.g. merge out of vocab)
            raise ValueError(f"{g.path.name}: invalid {model} vocabulary: {e}") from None
        added = [AddedToken(t, special=(ty == CONTROL), normalized=False)
                 for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)]
        tok.add_tokens(added)
        self.hf = tok
        self._lock = threading.Lock()
        self.n_vocab = len(tokens)
        self.bos_id = _token_id(g, "bos", self.n_vocab)
        self.eos_id = _token_id(g, "eos", self.n_vocab)
        self.add_bos = bool(g.meta("tokenizer.ggml.add_bos_token", False))
        self.chat_template = g.meta("tokenizer.chat_template", None)
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise ValueError(f"{g.path.name}: tokenizer.chat_template must be a string")
        self.template = ChatTemplate(self)
        # generation stops at any end-of-turn/end-of-text id the file names, and at the
        # end-of-turn tokens of the common templates when the chat template writes one
        stop = {_token_id(g, k, self.n_vocab) for k in ("eos", "eot", "eom")}
        stop |= {vocab[t] for t in _END_OF_TURN if t in vocab and t in self.template.source}
        self.stop_ids = {s for s in stop if s is not None}

    def encode(self, text, bos=None, control=True):
        """Token ids of `text`; a BOS id first when `bos` (default: the file's add_bos_token).
        control=False reads control tokens' text (e.g. "<|im_end|>") as plain text."""
        with self._lock:  # encode_special_tokens is a setting of the shared HF tokenizer
            self.hf.encode_special_tokens = not control
            try:
                ids = self.hf.encode(text, add_special_tokens=False).ids
            finally:
                self.hf.encode_special_tokens = False
        if (self.add_bos if bos is None else bos) and self.bos_id is not None:
            ids = [int(self.bos_id)] + ids
        return ids

    def decode(self, ids):
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def render_chat(self, messages, add_generation_prompt=True):
        """The prompt text of a conversation, from the file's chat template (ChatML when it
        has none): messages [{"role": "system"/"user"/"assistant", "content": str}, ...]."""
        return self.template.render(messages, add_generation_prompt)

    def encode_chat(self, messages, add_generation_prompt=True):
        """Token ids of render_chat(messages), with control tokens only where the template
        put them: text inside messages is always plain text (nexvk/model/chat.py)."""
        return self.template.encode(messages, add_generation_prompt)
