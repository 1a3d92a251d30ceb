"""`nexvk serve`: the command line of the server (flags as llama-server's where they exist)."""
from pathlib import Path

from nexvk.model import commands


def add_parser(sub):
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with several sequences "
                                     "at once, each with its own compressed KV cache")
    commands._model_flag(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    p.add_argument("-np", "--parallel", dest="n_parallel", type=int, default=4,
                   help="sequences served at once, their decode steps batched; later requests "
                        "wait (default: 4)")
    p.add_argument("-c", "--ctx-size", dest="ctx", type=int, default=2048,
                   help="context of EACH sequence in tokens, prompt and reply together "
                        "(llama-server divides -c among its slots; nexvk does not) "
                        "(default: 2048)")
    commands._cache_flags(p, "turbo3")
    commands._device_flags(p)
    p.add_argument("--seed", type=int, default=0, help="codec seed of the caches (default: 0)")
    p.add_argument("-a", "--alias", default=None,
                   help="model name the API reports (default: the GGUF file's name)")
    p.set_defaults(func=cmd_serve, sparse_v=None)


def cmd_serve(args):
    try:
        from nexvk.serve.app import serve
    except ImportError as e:
        raise RuntimeError(f"nexvk serve needs FastAPI and uvicorn ({e}): "
                           "pip install 'nexvk[serve]'") from None
    from nexvk.model.fetch import resolve_model
    from nexvk.model.model import Model
    commands._early_checks(args)
    if args.n_parallel < 1:
        raise ValueError(f"-np must be at least 1, got {args.n_parallel}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    path = resolve_model(args.model)
    m = Model.load(path, ctx=args.ctx, progress=True, cache=commands.cache_config(args, path),
                   threads=args.threads)
    serve(m, args.n_parallel, args.host, args.port, args.alias or Path(path).stem)
    return 0
