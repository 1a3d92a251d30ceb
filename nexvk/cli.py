"""Command line: `nexvk <subcommand>`; every subcommand is a thin shell over the Python API."""
import argparse
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
    validate.add_parser(sub)
    bench.add_parser(sub)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nexvk",
        description="Run language models with a TurboQuant-compressed KV cache on any Vulkan GPU.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_devices(sub)
    _add_model_commands(sub)
    _add_tools(sub)
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        rc = 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"nexvk {args.command}: error: {e}", file=sys.stderr)
        rc = 2
    sys.exit(rc or 0)
