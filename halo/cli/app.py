"""The ``halo`` command line: the root parser and :func:`main`.

Every command lives in one module of :data:`COMMAND_MODULES`, which registers its subcommands
with ``add_parser(commands)`` (:class:`halo.cli.common.Commands`); command modules import only
:mod:`halo.cli.common` and :mod:`halo.cli.options`, never each other.  Every subcommand has ``--help``.  Problems with the
user's files (missing, wrong keys, wrong shapes, NaNs, wrong units) are reported as one line
naming the file and the problem, with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from halo.cli.common import CliError, Commands, command_name

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Command modules in ``halo --help`` order; each exposes ``add_parser(commands)``.
COMMAND_MODULES: list[str] = [
    "halo.cli.mesh",  # mesh, demo, convert-checkpoint
    "halo.cli.data",  # data prepare/build/synth/show/grasps-synth/grasps-show
    "halo.cli.eval",  # eval meshes, generate meshes
    "halo.cli.generate",  # generate grasps
    "halo.cli.grasps",  # eval grasps
    "halo.cli.intersect",  # intersect
    "halo.cli.fit",  # fit
    "halo.cli.refine",  # refine grasps
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="halo",
        description="HALO: skeleton-driven neural occupancy for hands. Units: metres; joints: MANO order.",
    )
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(commands)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "your input is wrong": one line, exit code 2 (every command)."""
    from halo.grasp.records import RecordsWriteError
    from halo.grasp.simulation import OptionalDependencyError
    from halo.utils.errors import InputError

    return (CliError, InputError, OptionalDependencyError, RecordsWriteError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    from halo.utils.allocator import tune_allocator

    args = build_parser().parse_args(argv)
    tune_allocator()
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"halo {command_name(args)}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"halo {command_name(args)}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
