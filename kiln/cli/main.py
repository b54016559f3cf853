"""`kiln <command>`: one module per command in kiln/cli/, each registering itself.

User errors (a missing file, a bad flag, an unsupported model) print one message to
stderr and exit 1, with no traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable
from typing import NoReturn

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


class _Parser(argparse.ArgumentParser):
    """Bad flags get the same one-message form as every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n  fix: see `{self.prog} --help`\n")


def parser() -> argparse.ArgumentParser:
    _load_commands()
    top = _Parser(prog="kiln", description=__doc__.splitlines()[0])
    top.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (doc, add_arguments, handler) in sorted(_COMMANDS.items()):
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        add_arguments(p)
        p.set_defaults(handler=handler)
    return top


def main(argv: list[str] | None = None) -> int:
    top = parser()
    args, extra = top.parse_known_args(argv)
    if not getattr(args, "handler", None):
        if extra:
            top.error(f"unrecognized arguments: {' '.join(extra)}")
        top.print_help()
        return 2
    if extra:  # named with the command, whose --help lists what it takes
        top.prog = f"kiln {args.command}"
        top.error(f"unrecognized arguments: {' '.join(extra)}")
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
    except BrokenPipeError:  # `kiln inspect --json | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # as Python's docs advise: no flush error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
