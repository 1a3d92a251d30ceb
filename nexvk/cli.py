"""Command line: `nexvk <subcommand>`; every subcommand is a thin shell over the Python API."""
import argparse
import os
import sys


def _add_devices(sub):
    p = sub.add_parser("devices", help="list Vulkan devices")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.set_defaults(func=_cmd_devices)


def _cmd_devices(args):
    import json
    import nexvk
    devs = nexvk.devices()
    if args.json:
        print(json.dumps(devs, indent=2))
        return 0
    if not devs:
        print("no Vulkan device found (install a Vulkan driver; nexvk falls back to numpy)")
        return 1
    from nexvk.device.probe import format_table
    print(format_table(devs))
    return 0


# ---- model commands (fetch, plan, run, ppl) -------------------------------------------------
def _add_model_commands(sub):
    from nexvk.model import commands
    commands.add_parsers(sub)


def _add_tools(sub):
    from nexvk import bench, validate
    from nexvk.serve import command as serve
    validate.add_parser(sub)
    bench.add_parser(sub)
    serve.add_parser(sub)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nexvk",
        description="Run language models with a TurboQuant-compressed KV cache on any Vulkan GPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_devices(sub)
    _add_model_commands(sub)
    _add_tools(sub)
    args = parser.parse_args(argv)
    rc = 2
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
    except KeyboardInterrupt:
        rc = 130
    except BrokenPipeError:  # e.g. `nexvk run ... | head -c 5`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        _error(args.command, "stopped: standard output was closed (broken pipe)")
        rc = 141  # 128 + SIGPIPE, what a shell reports for a program killed by a closed pipe
    except MemoryError as e:
        _error(args.command, f"error: out of memory ({e or 'an allocation failed'}); lower the "
               "context (-c) or choose a smaller cache format (-ctk/-ctv)")
    except (ValueError, OSError, RuntimeError) as e:  # OSError includes FileNotFoundError
        _error(args.command, f"error: {e}")
    sys.exit(rc or 0)


def _error(command, message):
    """One line on stderr (messages that carry a tool's output are joined onto it)."""
    try:
        print(f"nexvk {command}: " + " ".join(str(message).split()), file=sys.stderr)
    except OSError:  # stderr closed as well: nothing left to tell
        pass
