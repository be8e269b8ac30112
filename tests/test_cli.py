"""The ``lcq`` entry point: every option of every verb says what it does in ``--help`` (a default decided
later, None, in the option's own words, not as "(default: None)"); errors of files and of a closed output pipe
end in one line or none, not a traceback."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from lcq.cli import main


def _verbs() -> dict[str, argparse.ArgumentParser]:
    parsers = {}
    original = argparse._SubParsersAction.add_parser

    def record(self, name, **kwargs):
        parsers[name] = original(self, name, **kwargs)
        return parsers[name]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(argparse._SubParsersAction, "add_parser", record)
        with pytest.raises(SystemExit):
            main(["--help"])
    return parsers


VERBS = _verbs()


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_option_has_help_and_no_none_default(verb, capsys):
    parser = VERBS[verb]
    silent = [a.option_strings[-1] for a in parser._actions if a.option_strings and not a.help]
    assert not silent, f"lcq {verb}: options without help: {silent}"
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text


def test_a_file_error_is_one_line_and_other_os_errors_still_show_their_traceback(monkeypatch, capsys):
    import compiler.cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/models/m.lcq")

    monkeypatch.setattr(compiler.cli, "cmd_report", denied)
    assert main(["report", "m.lcq"]) == 2
    assert capsys.readouterr().err == "lcq report: error: [Errno 13] Permission denied: '/models/m.lcq'\n"

    def unnamed(args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(compiler.cli, "cmd_report", unnamed)
    with pytest.raises(OSError, match="Input/output error"):
        main(["report", "m.lcq"])


def test_an_interrupted_verb_ends_in_one_line_with_the_shells_status(monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) in a verb that does not handle it itself: one line, status 130; SIGTERM or
    SIGHUP raised as lcq_train.stop_signals.Stopped: the shell's status for it; lcq train says how to go on."""
    import signal

    import compiler.cli
    import lcq_train.cli
    from lcq_train.stop_signals import Stopped

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compiler.cli, "cmd_report", interrupted)
    assert main(["report", "m.lcq"]) == 130
    assert capsys.readouterr().err == "lcq report: interrupted (Ctrl-C); files are written whole or not at all\n"

    def stopped(args):
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(lcq_train.cli, "cmd_train", stopped)
    assert main(["train", "--out", "runs/x"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.startswith("lcq train: stopped by SIGTERM; files are written whole or not at all; no epoch had "
                          "finished: run the same command again, without --resume") and \
        err.count("\n") == 1, err          # (runs/x holds no checkpoint; test_train.py has one that does)


def test_output_onto_a_full_disk_is_one_line():
    """``lcq report M > report.md`` on a full disk (stdout's write fails with ENOSPC and no file name): one error
    line, not a traceback."""
    root = Path(__file__).resolve().parent.parent
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "lcq.cli", "report", "tests/data/digits-cnn-lcq-w3a3.lcq"],
                              cwd=root, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == "lcq report: error: [Errno 28] No space left on device; " \
                                                   "free space on its disk; then run the same command again\n", \
        proc.stderr


def test_output_into_a_closed_pipe_ends_quietly_with_sigpipes_status():
    """``lcq report M | head -1``: the reader leaves before the table is written; no traceback, status 141."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "lcq.cli", "report", "tests/data/cifar10-resnet20-lcq-w3a3.lcq"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                 # long before the interpreter has started and written anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


@pytest.mark.parametrize("argv", [["report", "m.lcq", "--bogus"], ["demo", "--bogus", "x"], ["flash", "--board",
                                                                                            "icebreaker", "--bogus"]])
def test_an_unknown_option_of_a_verb_is_refused_by_that_verb(argv, capsys):
    """An option the verb does not have: the verb's usage and ``lcq VERB: error: unrecognized arguments``, status 2
    (as a missing argument of the verb is said), not the usage of ``lcq`` itself."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.startswith(f"usage: lcq {argv[0]} ") and err.splitlines()[-1] == \
        f"lcq {argv[0]}: error: unrecognized arguments: {' '.join(argv[argv.index('--bogus'):])}", err


def test_an_unknown_option_before_the_verb_is_refused_by_lcq(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--bogus", "report", "m.lcq"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "lcq: error: unrecognized arguments: --bogus"


def test_version_prints_the_packages_version(capsys):
    """``lcq --version``: the installed distribution's version on stdout, status 0 (not 'COMMAND is required')."""
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"lcq {version('lcq-accel')}\n"



MODEL_FILE = "the model file that `lcq compile` wrote"
CHECKPOINT_FILE = "the checkpoint.pt that `lcq train --out DIR` writes"


@pytest.mark.parametrize("argv,what", [(["report"], MODEL_FILE), (["generate", "-o", "core.v"], MODEL_FILE),
                                       (["compile", "-o", "m.lcq"], CHECKPOINT_FILE)])
def test_a_fifo_or_a_device_given_as_a_file_is_named_as_such_not_as_missing(tmp_path, monkeypatch, capsys, argv,
                                                                              what):
    """A named pipe or /dev/null where a model or checkpoint goes: refused without reading it, as not a regular
    file (it was said to be missing: 'no compiled model at /dev/null')."""
    import os

    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe")
    for path in ("pipe", "/dev/null"):
        assert main([*argv, path]) == 2
        assert capsys.readouterr().err == f"lcq {argv[0]}: error: {path} is not a regular file (a named pipe or a " \
            f"device): pass {what}\n"


@pytest.mark.parametrize("argv", [["flash", "--board", "icebreaker", "--bitstream"],
                                  ["run", str(Path(__file__).parent / "data" / "digits-cnn-lcq-w3a3.lcq"), "--board",
                                   "icebreaker", "--port", "/dev/nonexistent-port", "--report"]])
def test_a_fifo_or_a_device_given_as_a_bitstream_or_a_report_is_named_as_such(tmp_path, monkeypatch, capsys, argv):
    """`lcq flash --bitstream` and `lcq run --report` said a named pipe or /dev/null was missing ('bitstream pipe
    not found', 'no build report pipe'); each is refused, unread, as not a regular file."""
    import os

    monkeypatch.chdir(tmp_path)
    os.mkfifo("pipe")
    for path in ("pipe", "/dev/null"):
        assert main([*argv, path]) == 2
        assert f"{path} is not a regular file (a named pipe or a device)" in capsys.readouterr().err


def test_each_verb_imports_its_own_module_only():
    """``lcq VERB`` built every stage's parser, importing torch and Amaranth (1.5 s) before ``lcq report`` read a
    byte; it now imports the module that adds VERB (:data:`lcq.cli.VERBS`, equal to what each module adds) only:
    ``lcq report`` and ``lcq run --help`` start without torch or Amaranth."""
    import importlib

    from lcq import cli

    added = {}
    for name in cli.VERB_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        added.update(dict.fromkeys(importlib.import_module(name).add_parsers(sub), name))
    assert cli.VERBS == added and set(VERBS) == set(added)
    root = Path(__file__).resolve().parent.parent
    probe = ("import sys\nfrom lcq.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    code = e.code\nprint(sorted(m for m in ('torch', 'amaranth', 'sklearn') if m in sys.modules), code)")
    for argv in (["report", "tests/data/digits-cnn-lcq-w3a3.lcq"], ["run", "--help"], ["generate", "--help"]):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], cwd=root, capture_output=True, text=True,
                              timeout=120)
        assert proc.stdout.splitlines()[-1] == "[] 0" and proc.returncode == 0, (argv, proc.stdout[-500:],
                                                                                proc.stderr[-2000:])
