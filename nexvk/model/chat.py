"""Chat prompts: the model file's `tokenizer.chat_template` rendered with jinja2, and turned
into token ids so that user text can never become control tokens.

The template runs in jinja2's ImmutableSandboxedEnvironment with the settings and helpers
Hugging Face transformers gives chat templates (trim_blocks, lstrip_blocks, loop controls,
`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII text), with `messages`,
`add_generation_prompt`, `bos_token` and `eos_token`. A file without a template gets ChatML.

Tokenizing the rendered string as a whole would turn "<|im_end|>" typed by a user into the
end-of-turn id. `ChatTemplate.encode` therefore renders once more with every message text
fenced by two Unicode noncharacters, and recognizes control tokens only outside the fences,
where the template put them; the rest (template text and message text alike, in one piece
between control tokens, so token boundaries are those of the plain string) is tokenized with
control tokens read as plain text.
"""
import json
import re
from datetime import datetime

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
          "message['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

_OPEN, _CLOSE = "\ufdd0", "\ufdd1"  # noncharacters: never part of real text


class ChatTemplate:
    """render(messages) -> str and encode(messages) -> token ids for one Tokenizer."""

    def __init__(self, tokenizer, source=None):
        """source: a template to use instead of the tokenizer's (default: the file's)."""
        self.tok = tokenizer
        given = source if source is not None else tokenizer.chat_template
        self.source = given or CHATML
        self.from_file = given is not None
        self._template = None
        self._control = None  # regex of every control token's text, longest first

    def render(self, messages, add_generation_prompt=True):
        """The prompt text the template makes of `messages` (a list of {"role", "content"}
        dicts; content a string or a list of {"type": "text", "text"} parts)."""
        return self._render(_check_messages(messages), add_generation_prompt)

    def encode(self, messages, add_generation_prompt=True):
        """Token ids of render(messages): control tokens only where the template wrote them
        (no BOS is added: a template that wants one writes bos_token)."""
        messages = _check_messages(messages)
        text = self._render(messages, add_generation_prompt)
        fenced = self._render([_fence(m) for m in messages], add_generation_prompt)
        if fenced.replace(_OPEN, "").replace(_CLOSE, "") != text:
            raise ValueError("the chat template's output depends on the message text in a way "
                             "that keeps its control tokens from being told apart from it")
        control = self._control_tokens()
        plain = self._plain_ids
        ids, piece = [], []
        for i, part in enumerate(re.split(f"[{_OPEN}{_CLOSE}]", fenced)):
            if i % 2:  # inside a fence: message text
                piece.append(part)
                continue
            at = 0
            for m in control.finditer(part):
                piece.append(part[at:m.start()])
                ids += plain("".join(piece)) + [self.tok.hf.token_to_id(m.group())]
                piece, at = [], m.end()
            piece.append(part[at:])
        return ids + plain("".join(piece))

    def _render(self, messages, add_generation_prompt):
        from jinja2 import TemplateError
        tok = self.tok
        names = [None if i is None else tok.hf.id_to_token(i) for i in (tok.bos_id, tok.eos_id)]
        try:
            if self._template is None:
                self._template = _environment().from_string(self.source)
            return self._template.render(messages=messages,
                                         add_generation_prompt=bool(add_generation_prompt),
                                         bos_token=names[0] or "", eos_token=names[1] or "")
        except TemplateError as e:
            where = "the model's chat template" if self.from_file else "the ChatML template"
            raise ValueError(f"{where}: {e}") from None

    def _control_tokens(self):
        if self._control is None:
            names = sorted((t.content for t in self.tok.hf.get_added_tokens_decoder().values()
                            if t.special), key=len, reverse=True)
            self._control = re.compile("|".join(map(re.escape, names)) or r"(?!)")
        return self._control

    def _plain_ids(self, text):
        return self.tok.encode(text, bos=False, control=False) if text else []


def _environment():
    """A sandboxed jinja2 environment set up as transformers sets up chat templates."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def _check_messages(messages):
    """ValueError unless messages is a non-empty list of {"role": str, "content": str or a
    list of {"type": ..., "text": str} parts}."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"message {i} must be a dict with a string 'role'")
        c = m.get("content")
        texts = [c] if isinstance(c, str) else (
            [p.get("text") for p in c if isinstance(p, dict) and p.get("type") == "text"]
            if isinstance(c, list) and all(isinstance(p, dict) for p in c) else None)
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"message {i}: 'content' must be a string or a list of "
                             "{'type': 'text', 'text': str} parts")
        if any(_OPEN in t or _CLOSE in t for t in texts):
            raise ValueError(f"message {i} contains U+FDD0 or U+FDD1 (Unicode noncharacters, "
                             "reserved for internal use)")
    return list(messages)


def _fence(message):
    """The message with each text fenced; whitespace at its ends stays outside the fence,
    so a template that trims the text trims the same characters."""
    def fence(t):
        core = t.strip()
        if not core:
            return t
        start = t.index(core)
        return t[:start] + _OPEN + core + _CLOSE + t[start + len(core):]
    c = message["content"]
    if isinstance(c, str):
        c = fence(c)
    else:
        c = [dict(p, text=fence(p["text"])) if p.get("type") == "text" else p for p in c]
    return dict(message, content=c)
