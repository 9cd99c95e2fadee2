"""The ``lipcert`` command line: ``lipcert SUBCOMMAND ...`` (also ``python -m lipcert``).

Each subcommand lives in a module of this package that defines ``add_parser(subparsers)``
and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence

from ..errors import InputRangeWarning, LipcertError

COMMANDS = ("bound", "certify", "compare", "demo", "inspect", "report", "vnnlib")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="lipcert", description="Certified robustness from Lipschitz bounds.")
    parser.add_argument("--version", action="version", version=f"lipcert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors lipcert raises on purpose print one line and exit 2."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("always", InputRangeWarning)
        warnings.showwarning = _one_line(args.command, warnings.showwarning)
        return _run(args)


def _one_line(command: str, show: Callable[..., None]) -> Callable[..., None]:
    """A warnings.showwarning that prints lipcert's own warnings as one line and leaves others as they are."""
    def showwarning(message: Warning | str, category: type[Warning], *rest: object, **kw: object) -> None:
        if issubclass(category, InputRangeWarning):
            print(f"lipcert {command}: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *rest, **kw)
    return showwarning


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args) or 0)
    except LipcertError as exc:
        print(f"lipcert {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lipcert {args.command}: interrupted", file=sys.stderr)
        return 130
