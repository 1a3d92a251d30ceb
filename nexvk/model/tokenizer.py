"""The model's own tokenizer, rebuilt from the GGUF's tokenizer.ggml.* metadata.

GGUF stores a byte-level BPE vocabulary (`tokenizer.ggml.model == "gpt2"`) as the token list,
the merge list, token types and a pre-tokenizer name (`tokenizer.ggml.pre`). We rebuild the
same thing as a HuggingFace `tokenizers.Tokenizer`: pre-tokenizer chosen from the name (the
regexes llama.cpp uses for each), BPE model, byte-level decoder; control and user-defined tokens
become added tokens so that `<|im_start|>` in text maps to its single id. SentencePiece vocabs
(`"llama"`) are not supported yet and raise ValueError.
"""
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models
from tokenizers import pre_tokenizers as pt

# token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

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


class Tokenizer:
    """encode(text) -> list[int], decode(ids) -> str, plus bos/eos ids and the chat template."""

    def __init__(self, g):
        model = g.meta("tokenizer.ggml.model", None)
        if model != "gpt2":
            raise ValueError(f"{g.path.name}: tokenizer model '{model}' is not supported "
                             "(only byte-level BPE, tokenizer.ggml.model = gpt2)")
        tokens = g.strings("tokenizer.ggml.tokens")
        merges = []
        for i, m in enumerate(g.strings("tokenizer.ggml.merges")):
            a, space, b = m.partition(" ")
            if not (a and space and b):
                raise ValueError(f"{g.path.name}: BPE merge {i} ({m[:40]!r}) is not two tokens "
                                 "separated by a space")
            merges.append((a, b))
        types = (g.meta_array("tokenizer.ggml.token_type").tolist()
                 if g.has("tokenizer.ggml.token_type") else [NORMAL] * len(tokens))
        if len(types) != len(tokens):
            raise ValueError(f"{g.path.name}: {len(types)} token types for {len(tokens)} tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        try:
            tok = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
        except Exception as e:  # tokenizers raises a bare Exception (e.g. merge out of vocab)
            raise ValueError(f"{g.path.name}: invalid BPE vocabulary: {e}") from None
        pre = g.meta("tokenizer.ggml.pre", None)
        if pre is not None and not isinstance(pre, str):
            raise ValueError(f"{g.path.name}: tokenizer.ggml.pre must be a string")
        tok.pre_tokenizer = _pre_tokenizer(pre)
        tok.decoder = decoders.ByteLevel()
        added = [AddedToken(t, special=(ty == CONTROL), normalized=False)
                 for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)]
        tok.add_tokens(added)
        self.hf = tok
        self.n_vocab = len(tokens)
        self.bos_id = self._token_id(g, "bos")
        self.eos_id = self._token_id(g, "eos")
        self.add_bos = bool(g.meta("tokenizer.ggml.add_bos_token", False))
        self.chat_template = g.meta("tokenizer.chat_template", None)
        if self.chat_template is not None and not isinstance(self.chat_template, str):
            raise ValueError(f"{g.path.name}: tokenizer.chat_template must be a string")
        # generation stops at any end-of-turn/end-of-text id the file names
        stop = {self._token_id(g, k) for k in ("eos", "eot", "eom")}
        if "<|im_end|>" in vocab and self.chat_template and "<|im_end|>" in self.chat_template:
            stop.add(vocab["<|im_end|>"])
        self.stop_ids = {s for s in stop if s is not None}

    def _token_id(self, g, which):
        """tokenizer.ggml.<which>_token_id as an int in [0, n_vocab), or None when absent."""
        key = f"tokenizer.ggml.{which}_token_id"
        v = g.meta(key, None)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.n_vocab:
            raise ValueError(f"{g.path.name}: {key} must be a token id in [0, {self.n_vocab}), "
                             f"got {str(v)[:40]}")
        return v

    def encode(self, text, bos=None):
        """Token ids of `text`; a BOS id first when `bos` (default: the file's add_bos_token)."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if bos is None else bos) and self.bos_id is not None:
            ids = [int(self.bos_id)] + ids
        return ids

    def decode(self, ids):
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def chat(self, prompt):
        """`prompt` wrapped as one user turn with the model's ChatML template (ValueError if
        the file has no ChatML-style chat template)."""
        t = self.chat_template or ""
        if "<|im_start|>" not in t:
            raise ValueError("--chat needs a ChatML-style tokenizer.chat_template in the model")
        system = ""
        if "You are" in t:  # the default system turn the template inserts (e.g. SmolLM2)
            start = t.index("You are")
            system = t[start:t.index("<|im_end|>", start)]
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return f"{head}<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
