"""What every ``halo`` command module shares: the one error type, the command tree and the HALO base
checkpoint lookup (options declared once: :mod:`halo.cli.options`).

Command modules import from here and :mod:`halo.cli.options`, never from each other;
:mod:`halo.cli.app` registers them.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

__all__ = [
    "DEFAULT_CHECKPOINT_ENV",
    "DEFAULT_EVAL_OUT",
    "CliError",
    "Commands",
    "default_checkpoint",
    "json_safe",
    "load_halo_model",
]

DEFAULT_CHECKPOINT_ENV = "HALO_CHECKPOINT"
DEFAULT_EVAL_OUT = Path("outputs") / "eval"


class CliError(Exception):
    """A user-facing problem: :func:`halo.cli.app.main` prints it as one line and exits with code 2."""


# ----------------------------------------------------------------------------- the command tree

#: The command groups several modules add subcommands to: name -> (help, metavar).
GROUPS = {
    "eval": ("evaluate meshes of a trained model or a folder of grasps", "WHAT"),
    "generate": ("meshes or grasps from a trained model", "WHAT"),
}


class Commands:
    """The root parser's subcommands, handed to every command module's ``add_parser``.

    ``add_parser`` adds a top-level command (``halo intersect``), like argparse's subparsers;
    ``group("eval")`` gives the subparsers of ``halo eval`` (created by whichever module asks
    first), so ``halo eval grasps`` is registered by the module that defines it.
    """

    def __init__(self, subparsers) -> None:
        self._root = subparsers
        self._groups: dict[str, object] = {}

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self._root.add_parser(name, **kwargs)

    def group(self, name: str):
        if name not in self._groups:
            help_text, metavar = GROUPS[name]
            parser = self._root.add_parser(name, help=help_text, description=help_text)
            self._groups[name] = parser.add_subparsers(dest=f"{name}_command", required=True, metavar=metavar)
        return self._groups[name]


def command_name(args: argparse.Namespace) -> str:
    """``"eval grasps"`` for ``halo eval grasps ...``: the command and its subcommand, if any."""
    sub = getattr(args, f"{args.command.replace('-', '_')}_command", None)
    return f"{args.command} {sub}" if sub else args.command


# ----------------------------------------------------------------------------- the HALO base


def default_checkpoint() -> str | None:
    """``$HALO_CHECKPOINT``, else the original release's model_best.pt in a development checkout, else None."""
    env = os.environ.get(DEFAULT_CHECKPOINT_ENV)
    if env:
        return env
    # A checkout next to the shared reference material (the development setup).
    guess = Path(__file__).resolve().parents[2] / "shared" / "reference" / "halo_original" / "model_best.pt"
    return str(guess) if guess.is_file() else None


def load_halo_model(path: str | None, trust_pickle: bool = False):
    """(HaloModel, metadata) of a HALO base checkpoint (original, ``halo-base`` .pt or training .ckpt)."""
    from halo.core.checkpoint import load_model

    if path is None:
        raise CliError(
            f"no checkpoint given: pass --checkpoint PATH (the original release's model_best.pt, a file "
            f"from 'halo convert-checkpoint', or a training checkpoint) or set ${DEFAULT_CHECKPOINT_ENV}"
        )
    return load_model(path, trust_pickle=trust_pickle)


def json_safe(value):
    """NaN / inf -> None (JSON has no NaN), recursively through dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
