"""JSON files a user gives (``lcq train --config``; ``lcq run --report`` in test_boards.py): whatever the text,
a ValueError saying why it cannot be read, never a RecursionError or Python's integer-digit limit."""

import re
import sys

import pytest

from lcq.cli import main
from lcq_train.json_text import parse_json

DEEP = '{"layer_bits": ' + "[" * 100_000 + "]" * 100_000 + "}"
LONG_INTEGER = '{"epochs": ' + "1" * 5000 + "}"       # Python's default limit: 4300 digits

CASES = [
    ("not json", r"it is not JSON \(Expecting value: line 1 column 1 \(char 0\)\)"),
    (DEEP, "its arrays and objects nest too deeply to read"),
    pytest.param(LONG_INTEGER, r"it holds an integer of more than 4300 digits",
                 marks=pytest.mark.skipif(getattr(sys, "get_int_max_str_digits", lambda: 0)() != 4300,
                                          reason="this Python has no integer-digit limit of 4300")),
]


def test_parse_json_reads_json():
    assert parse_json('{"a": [1, 2.5, null]}') == {"a": [1, 2.5, None]}


@pytest.mark.parametrize("text, message", CASES)
def test_parse_json_says_why_it_cannot(text, message):
    with pytest.raises(ValueError, match=message):
        parse_json(text)


@pytest.mark.parametrize("text, message", CASES)
def test_train_config_file_that_cannot_be_read_is_named(tmp_path, capsys, text, message):
    config = tmp_path / "config.json"
    config.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", str(config), "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"lcq train: error: cannot read --config {config}: " in err and "Traceback" not in err, err
    assert re.search(message, err), err
