"""`kiln <command>`: one module per command in kiln/cli/, each registering itself.

User errors (a missing file, a bad flag, an unsupported model) print one message to
stderr and exit 1, with no traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable

from kiln.errors import KilnError

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Registers the decorated handler as `kiln <name>`; its module docstring is the help."""

    def decorate(handler: Handler) -> Handler:
        doc = sys.modules[handler.__module__].__doc__ or name
        _COMMANDS[name] = (doc.strip(), add_arguments, handler)
        return handler

    return decorate


def _load_commands() -> None:
    import kiln.cli as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("main", "common") and not module.name.startswith("_"):
            try:
                importlib.import_module(f"kiln.cli.{module.name}")
            except ImportError as exc:  # an optional dependency is missing
                _COMMANDS.setdefault(module.name, (f"(unavailable: {exc})", lambda p: None,
                                                   _unavailable(module.name, exc)))


def _unavailable(name: str, exc: ImportError) -> Handler:
    def handler(_args: argparse.Namespace) -> int:
        raise KilnError(f"`kiln {name}` needs a package that is not installed: {exc}",
                        hint="pip install 'kiln[bench,serve]' (or the package named above)")

    return handler


def parser() -> argparse.ArgumentParser:
    _load_commands()
    top = argparse.ArgumentParser(prog="kiln", description=__doc__.splitlines()[0])
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (doc, add_arguments, handler) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        add_arguments(p)
        p.set_defaults(handler=handler)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not getattr(args, "handler", None):
        parser().print_help()
        return 2
    try:
        return args.handler(args)
    except KilnError as exc:
        if args.debug:
            raise
        print(f"kiln {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
