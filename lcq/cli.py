"""The ``lcq`` command: every stage's verbs under one entry point.

Each stage contributes its own verbs from its own ``cli`` module (``add_parsers(sub)`` ->
``{verb: handler}``): ``train``, ``plot``, ``export-onnx`` (:mod:`lcq_train.cli`), ``compile``, ``eval``,
``report``, ``predict`` (:mod:`compiler.cli`), ``generate`` (:mod:`hw.cli`), ``sim``, ``board-sim`` (:mod:`sim.cli`),
``build``, ``flash``, ``run`` (:mod:`boards.cli`); ``demo`` (:mod:`lcq.demo`) chains them. A stage
whose third-party packages are not installed (torch for the trainer, say, on a host that
only talks to a board) leaves its verbs out, and ``lcq --help`` says which and why.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from pathlib import Path

# Verb modules in the order of the data flow (also the order of ``lcq --help``).
VERB_MODULES = ("lcq_train.cli", "compiler.cli", "hw.cli", "sim.cli", "boards.cli", "lcq.demo")
# The module that adds each verb (tests/test_cli.py holds it equal to what their ``add_parsers`` add): ``lcq VERB``
# imports that module only, so that ``lcq report`` (say) starts without importing torch or Amaranth.
VERBS = {"train": "lcq_train.cli", "plot": "lcq_train.cli", "export-onnx": "lcq_train.cli",
         "compile": "compiler.cli", "eval": "compiler.cli", "report": "compiler.cli", "predict": "compiler.cli",
         "generate": "hw.cli", "sim": "sim.cli", "board-sim": "sim.cli",
         "build": "boards.cli", "flash": "boards.cli", "run": "boards.cli", "demo": "lcq.demo"}
DISTRIBUTION = "lcq-accel"     # pyproject.toml's project name, whose version `lcq --version` prints
PROJECT_PACKAGES = {"lcq", "lcq_train", "compiler", "hw", "sim", "boards"}


def _version() -> str:
    """The installed distribution's version (pyproject.toml's), or what to do where it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return f"(unknown: the {DISTRIBUTION} distribution is not installed; pip install -e . records it)"


def build_parser(modules: tuple[str, ...] = VERB_MODULES) -> tuple[argparse.ArgumentParser,
                                                                    argparse._SubParsersAction, dict]:
    """The ``lcq`` parser with the verbs of ``modules`` (default: every verb), its verbs' subparsers
    (``sub.choices``) and ``{verb: handler}``; parsing runs nothing."""
    parser = argparse.ArgumentParser(prog="lcq",
                                     description="LCQ: train low-bit CNNs and map them to FPGA LUT-MAC arrays")
    parser.add_argument("--version", action="version", version=f"lcq {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands, missing = {}, []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.split(".")[0] in PROJECT_PACKAGES:
                raise
            missing.append(f"the verbs of {name.split('.')[0]} need {e.name!r}, which is not installed")
            continue
        commands.update(module.add_parsers(sub))
    if "train" in sub.choices:
        _add_board_option(sub.choices["train"])
    if missing:
        parser.epilog = "Not available here: " + "; ".join(missing) + " (pip install -e '.[hw]' installs everything)."
    return parser, sub, commands


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, sub, commands = build_parser((VERBS[argv[0]],)) if argv and argv[0] in VERBS else (None, None, {})
    if not commands:        # `lcq --help`, a verb not known or whose module cannot be imported here: every verb
        parser, sub, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    name = args.command
    if unknown:     # said by the verb that has none such, with its usage (argparse would say it as `lcq`'s)
        owner = sub.choices[name] if unknown[0] in argv[argv.index(name) + 1:] else parser
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    if name == "train":
        from lcq_train.cli import apply_config_file

        args = apply_config_file(sub.choices["train"], argv[argv.index("train") + 1:])
        if args.board and not args.compile_check:
            sub.choices["train"].error("--board estimates the network the compile check lowers; give it without "
                                       "--no-compile-check")
        if args.compile_check:      # (the trainer imports no other stage: the compiler's check is handed to it)
            args.check_model = _check_before_training(args.board)
    try:
        status = commands[name](args)
        sys.stdout.flush()      # here, not at exit: a reader that left (`lcq report M | head`) is caught below
        return status
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"lcq {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:      # Ctrl-C, or SIGTERM/SIGHUP as lcq_train.stop_signals.Stopped
        resume = f"; {_run_again(name, args)}" if name == "train" else ""
        print(f"lcq {name}: {str(e) or 'interrupted (Ctrl-C)'}; files are written whole or not at all{resume}",
              file=sys.stderr)
        return getattr(e, "exit_status", 130)
    except BrokenPipeError:     # whoever read our output stopped reading: nothing left to say, as other commands
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())     # (no flush error at exit)
        return 128 + signal.SIGPIPE
    except OSError as e:        # a file that cannot be read or written (permissions, a full disk): said, no traceback
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        if e.filename is None:
            if not full:
                raise
            # the output on a full disk (`lcq report M > report.md`): said, and not flushed again at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        advice = f"; free space on its disk; {_run_again(name, args)}" if full else ""
        print(f"lcq {name}: error: {e}{advice}", file=sys.stderr)
        return 2


def _add_board_option(train: argparse.ArgumentParser) -> None:
    """``lcq train --board NAME``: the trainer's parser, with the option that the check before training needs
    (:func:`_check_before_training`; the boards' names are the boards stage's, which the trainer does not import)."""
    from boards.boards import BOARDS

    train.add_argument("--board", choices=sorted(BOARDS), metavar="NAME",
                       help="before the first epoch, also say whether the whole network would fit this board (the "
                            f"fit estimate of `lcq build --estimate`; one of: {', '.join(sorted(BOARDS))})")


def _check_before_training(board_name: str | None):
    """What ``lcq train`` asks of a new run's network before it trains (:func:`lcq_train.train.train`'s
    ``check_model``): that `lcq compile` lowers it (:func:`compiler.preflight.check_network`), and with ``--board``
    whether the whole network fits that board, said on the first process's stdout (a warning on stderr where not)."""
    from compiler.preflight import check_network

    def check(model, input_shape, plan) -> None:
        compiled = check_network(model, input_shape, plan)      # (every process: each refuses alike)
        from lcq_train.train import process_rank

        if board_name is None or process_rank() != 0:           # (the verdict is said once: the first process's)
            return
        from boards.boards import get_board
        from boards.fit import board_verdict

        fits, verdict = board_verdict(compiled, get_board(board_name))
        print(f"lcq train: {verdict}" if fits else f"lcq train: warning: {verdict}", flush=True,
              file=sys.stdout if fits else sys.stderr)

    return check


def _run_again(name: str, args) -> str:
    """How to go on after ``lcq name`` stopped part-way: a training run resumes from its last checkpoint."""
    if name != "train":
        return "then run the same command again"
    if (Path(args.out) / "checkpoint.pt").is_file():
        return "the run's last finished epoch is in its checkpoint: run the same command with --resume"
    return "no epoch had finished: run the same command again, without --resume"


if __name__ == "__main__":
    sys.exit(main())
