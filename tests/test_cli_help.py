"""``lcq VERB --help``: every option of every verb says what it does, and a default decided later (None) is
described in the option's own words, not printed as "(default: None)"."""

import argparse

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
