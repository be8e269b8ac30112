"""`lcq_train.arguments.given_options`: which options a command line gives, whatever their defaults."""

import argparse

import pytest

from lcq_train.arguments import given_options
from lcq_train.cli import add_parsers


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="p")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--fp-epochs", type=int)
    p.add_argument("--name", default="x")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--layer", action="append", default=["a"])
    p.add_argument("--more", action="extend", nargs="*", default=[])
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def test_options_given_at_their_defaults_or_abbreviated_are_given():
    p = _parser()
    assert given_options(p, []) == {}
    assert given_options(p, ["--epochs", "3", "--name", "x"]) == {"epochs": 3, "name": "x"}   # the defaults
    assert given_options(p, ["--fp", "2", "--epo", "5", "--fa"]) == {"fp_epochs": 2, "epochs": 5, "fast": True}
    assert given_options(p, ["--layer", "b", "--layer", "c"]) == {"layer": ["b", "c"]}        # without default's
    assert given_options(p, ["--more", "-vv"]) == {"more": [], "verbose": 2}                  # no items: given
    assert p.parse_args([]).layer == ["a"] and p.parse_args([]).verbose == 0                  # parser unchanged


@pytest.mark.parametrize("argv, message", [(["--f", "1"], "ambiguous option: --f could match --fp-epochs, --fast"),
                                           (["--epochs", "x"], "argument --epochs: invalid int value: 'x'")])
def test_a_command_line_argparse_refuses_stops_as_parse_args(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        given_options(_parser(), argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_train_parser_and_the_cifar10_benchmark_tell_given_options_apart():
    from helpers import load_benchmark

    sub = argparse.ArgumentParser(prog="lcq").add_subparsers()
    add_parsers(sub)
    train = sub.choices["train"]
    assert given_options(train, ["--seed", "0", "--warmup", "1", "--layer-bits", "conv1=4/4"]) == {
        "seed": 0, "warmup_epochs": 1.0, "layer_bits": ["conv1=4/4"]}
    bench = load_benchmark("cifar10_resnet20")
    args = bench.parse_args(["--tiny", "--batch", "128", "--out", "o"])     # --batch-size, at its default
    assert args.batch_size == 128 and args.limit == 200                     # given wins over --tiny's 100


def test_output_file_refuses_a_pipe_or_a_device(tmp_path):
    """-o and --json-out name a file that is written whole and renamed over the path: a named pipe or a device
    (/dev/null, /dev/stdout under a terminal) would be replaced by the file (as root) or the write refused at the
    end, and a benchmark reading its earlier results there waited forever; refused when parsed. A regular file,
    or a path with nothing there yet, is taken."""
    import os

    from lcq_train.arguments import output_file

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(argparse.ArgumentTypeError, match=f"must name a file to write, not a named pipe: '{fifo}'"):
        output_file(str(fifo))
    with pytest.raises(argparse.ArgumentTypeError, match="must name a file to write, not a device: '/dev/null'"):
        output_file("/dev/null")
    (tmp_path / "old.json").write_text("{}")
    assert output_file(str(tmp_path / "old.json")) == str(tmp_path / "old.json")
    assert output_file(str(tmp_path / "new" / "x.json")) == str(tmp_path / "new" / "x.json")
