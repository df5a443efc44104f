"""The `adaptvid` command (also ``python -m adaptvid``): parse, set up logging, run one command,
turn the errors users can fix into one line on stderr and an exit status."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

from .commands import (cmd_adapt, cmd_demo_data, cmd_embed, cmd_eval, cmd_index, cmd_list, cmd_merge, cmd_predict,
                       cmd_profile, cmd_recipes, cmd_search, cmd_split)
from .parser import build_parser
from .import_command import cmd_import
from .prepare import cmd_prepare


COMMANDS = {"adapt": cmd_adapt, "eval": cmd_eval, "predict": cmd_predict, "embed": cmd_embed, "merge": cmd_merge,
            "profile": cmd_profile, "demo-data": cmd_demo_data, "list": cmd_list, "recipes": cmd_recipes,
            "split": cmd_split, "index": cmd_index, "search": cmd_search,
            "prepare": cmd_prepare, "import": cmd_import}


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one at set-up: tests and wrappers swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{record.name}: {level}{record.getMessage()}"


def _setup_logging(verbose: bool) -> None:
    """The command's own output (library code never configures logging): one handler on the root logger,
    adaptvid's progress lines at INFO and every library's warnings, each record printed once."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Format())
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("adaptvid").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--version"], ["-V"]):   # answered without importing torch
        from ..version import __version__

        print(f"adaptvid {__version__}")
        return 0
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from ..backbones import BackboneLoadError
    from ..data import VideoReadError
    from ..runner import NoUsefulWorkError, RecipeError
    from ..checkpoints.unit import CheckpointSaveError
    from ..train.resume import RunFinishedError
    from ..train.trainer import NoTrainingStepError

    try:
        return COMMANDS[args.command](args)
    except (NoUsefulWorkError, NoTrainingStepError, RunFinishedError) as error:
        print(f"adaptvid {args.command}: {error}", file=sys.stderr)
        return 1
    except (BackboneLoadError, RecipeError, FileExistsError, VideoReadError, FileNotFoundError, PermissionError,
            CheckpointSaveError, ValueError) as error:
        print(f"adaptvid {args.command}: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:   # `adaptvid ... | head`: the reader left; stop quietly as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        _end_process_group()


def _end_process_group() -> None:
    """Under torchrun / accelerate launch, tear down the process group the command started before the
    interpreter exits: left to the exit handlers, gloo's threads can abort a process ("terminate called
    without an active exception") after its work is done, failing a run that succeeded."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
