"""The READMEs' command lines parse with the real parsers, and their Python examples print what they say.

Nothing else ties README.md and benchmarks/README.md to the code: an option renamed in the code left the README
quoting a command that no longer runs, and no test failed. Parsing only: nothing is trained, built or simulated.
"""

import argparse
import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
# a synopsis's placeholders that must be given a value to parse (--wbits B, --images N, --rows R --cols C,
# --multiply-cols M, --stall P, --seed S, --board NAME); the others (DIR, MODEL, FILE, ...) are strings as they are
PLACEHOLDERS = {"B": "3", "N": "2", "R": "2", "C": "2", "M": "1", "P": "0.5", "S": "0", "NAME": "icebreaker"}
INLINE = re.compile(r"`((?:lcq|python benchmarks/\w+\.py)\s[^`]*)`")


def code_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """(line number of its first line, its lines) of each code block of a Markdown file: lines indented 4 spaces
    after a blank line (and the blank lines between them), or between ``` fences."""
    blocks, block, fenced, after_blank = [], None, False, True
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if fenced:
                blocks.append(block)
            block = None if fenced else (number + 1, [])
            fenced = not fenced
        elif fenced:
            block[1].append(line)
        elif line.startswith("    ") and (block is not None or after_blank):
            block = block or (number, [])
            block[1].append(line[4:])
        elif line.strip() and block is not None:
            blocks.append(block)
            block = None
        elif block is not None:
            block[1].append("")
        after_blank = not line.strip()
    return blocks + ([block] if block else [])


def shell_lines(path: Path) -> list[tuple[str, str]]:
    """("FILE:LINE", text) of each line of the code blocks, `\\` continuations joined, `$ ` prompts left out."""
    lines = []
    for first, block in code_blocks(path):
        where, text = None, ""
        for number, line in enumerate(block, first):
            where = where or f"{path.relative_to(ROOT)}:{number}"
            text += line.removeprefix("$ ")
            if text.endswith("\\"):
                text = text[:-1]
                continue
            lines.append((where, text))
            where, text = None, ""
    return lines


def commands(path: Path) -> list[tuple[str, list[str]]]:
    """("FILE:LINE", argv) of every ``lcq ...`` and ``python benchmarks/NAME.py ...`` command of the code blocks,
    argv starting with ``lcq`` or ``benchmarks/NAME.py``, made runnable: shell comments, `VAR=value` prefixes and
    `...` left out, $VAR given its value from an assignment line above, and the synopsis placeholders filled in
    (:func:`fill_in`)."""
    found, variables = [], {}
    for where, text in shell_lines(path):
        for part in text.split("&&"):
            try:
                words = shlex.split(part, comments=True)
            except ValueError:      # an unclosed quote: no shell line (a diagram, output, a `python -c "` line)
                continue
            while words and re.fullmatch(r"\w+=\S*", words[0]):
                name, _, value = words.pop(0).partition("=")
                if not words:           # an assignment line: M=tests/data/compile_models.py:torchvision_resnet
                    variables[name] = value
            words = [re.sub(r"\$(\w+)", lambda m: variables.get(m[1], m[0]), word) for word in words]
            if words[:1] == ["python"] and words[1:2] and words[1].startswith("benchmarks/"):
                words = words[1:]
            elif words and Path(words[0]).name == "lcq" and words[1:2] and not words[1].endswith(":"):
                words[0] = "lcq"        # (also .venv/bin/lcq; not an error message: `lcq compile: error: ...`)
            else:
                continue
            found.append((where, [words[0], *fill_in(words[1:])]))
    return found


def fill_in(words: list[str]) -> list[str]:
    """A synopsis's words made a command line: each optional [group] given, with its first `|` alternative; the
    first value of {a,b,c} and a|b|c; PLACEHOLDERS filled in; `...` left out."""
    filled, skipping = [], False
    for word in words:
        closes = word.endswith("]")
        word = word.strip("[]")
        if word == "|":
            skipping = True
        elif not skipping and word != "...":
            word = word[1:-1].split(",")[0] if word.startswith("{") and word.endswith("}") else word.split("|")[0]
            filled.append(PLACEHOLDERS.get(word, word))
        skipping = skipping and not closes
    return filled


def parse_problem(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """argparse's error line for ``argv`` (None: it parses)."""
    said = io.StringIO()
    try:
        with redirect_stdout(said), redirect_stderr(said):
            parser.parse_args(argv)
    except SystemExit:
        return said.getvalue().strip().splitlines()[-1] if said.getvalue().strip() else "exits while parsing"
    return None


class Captured(Exception):
    """Raised by the first ``parse_args`` a benchmark's ``main`` calls, with the parser it called it on."""


def benchmark_parser(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``benchmarks/NAME.py``'s ``main`` parses its command line with (each builds its own there or
    in its ``parse_args``); the module is imported, ``main`` stops at that call, before any work."""
    def capture(self, *args, **kwargs):
        raise Captured(self)

    module = load_benchmark(name, as_name=f"readme_{name}")
    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(Captured) as captured:
            module.main([])
    parser = captured.value.args[0]
    parser.prog = f"benchmarks/{name}.py"       # (not pytest's name, in its messages)
    parser.allow_abbrev = False                 # a README spells options out (a new option can make a prefix fail)
    return parser


def lcq_parser() -> tuple[argparse.ArgumentParser, dict]:
    """`lcq`'s parser and its verbs' parsers, as ``lcq.cli.main`` builds them."""
    from lcq.cli import build_parser

    parser, sub, _ = build_parser()
    for verb in sub.choices.values():
        verb.allow_abbrev = False               # a README spells options out (a new option can make a prefix fail)
    return parser, sub.choices


def all_commands(program: str) -> list[tuple[str, list[str]]]:
    """The READMEs' :func:`commands` of ``lcq`` (program "lcq") or of the benchmarks (program "benchmarks")."""
    return [(where, argv) for path in READMES for where, argv in commands(path)
            if (argv[0] == "lcq") == (program == "lcq")]


def test_readme_commands_are_found():
    """The extraction still finds the commands (a changed README layout must not make the tests below vacuous)."""
    lcq, benchmarks = [argv for _, argv in all_commands("lcq")], [argv for _, argv in all_commands("benchmarks")]
    assert len(lcq) >= 30 and {argv[1] for argv in lcq} >= {"train", "compile", "eval", "sim", "build", "demo"}
    assert len(benchmarks) >= 30 and {argv[0] for argv in benchmarks} >= {"benchmarks/accuracy.py",
                                                                          "benchmarks/ablations.py"}


def test_a_synopsis_is_filled_in():
    """[groups] are given (their first `|` alternative), {a,b} and a|b values their first, placeholders a value."""
    synopsis = "sim MODEL [--layer N] [--simulator icarus|verilator] [--data DIR | --inputs FILE.npz] ... --x {a,b}"
    assert fill_in(synopsis.split()) == ["sim", "MODEL", "--layer", "2", "--simulator", "icarus", "--data", "DIR",
                                         "--x", "a"]


def test_option_lines_continue_a_command():
    """A synopsis line of options under a command (`[--stall P ...]`) is joined to it by `\\`, so it is checked."""
    loose = [f"{where}: {text.strip()}" for path in READMES for where, text in shell_lines(path)
             if re.match(r"\s+\[?--?\w", text)]
    assert loose == [], "lines of options that continue no command (end the line above with \\):\n" + "\n".join(loose)


def test_readme_lcq_commands_parse():
    """Every `lcq ...` line of the READMEs' code blocks parses with `lcq`'s own parser."""
    parser, _ = lcq_parser()
    problems = [f"{where}: {' '.join(argv)}\n    {message}" for where, argv in all_commands("lcq")
                if (message := parse_problem(parser, argv[1:]))]
    assert problems == [], "README commands that lcq refuses:\n" + "\n".join(problems)


def test_readme_benchmark_commands_parse(monkeypatch):
    """Every `python benchmarks/NAME.py ...` line of the READMEs' code blocks parses with that script's parser."""
    problems, parsers = [], {}
    for where, (script, *argv) in all_commands("benchmarks"):
        name = Path(script).stem
        if not (ROOT / script).is_file():
            problems.append(f"{where}: {script} does not exist")
            continue
        parser = parsers[name] = parsers.get(name) or benchmark_parser(name, monkeypatch)
        if message := parse_problem(parser, argv):
            problems.append(f"{where}: python {script} {' '.join(argv)}\n    {message}")
    assert problems == [], "README commands that the benchmarks refuse:\n" + "\n".join(problems)


def test_readme_inline_commands_name_real_options(monkeypatch):
    """`lcq VERB ...` and `python benchmarks/NAME.py ...` quoted in running text (often fragments without their
    required arguments, so not parsed) name a verb or script that exists and only options it has."""
    lcq, verbs = lcq_parser()
    problems = []
    for path in READMES:
        text = path.read_text()
        for match in INLINE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(ROOT)}:{line}: `{match[1]}`"
            program, *words = fill_in(match[1].split())
            if program == "lcq":
                parser = lcq if words[0].startswith("-") else verbs.get(words[0])
                if parser is None:
                    problems.append(f"{where}: lcq has no verb {words[0]!r}")
                    continue
            elif not (ROOT / words[0]).is_file():
                problems.append(f"{where}: {words[0]} does not exist")
                continue
            else:
                parser = benchmark_parser(Path(words[0]).stem, monkeypatch)
            unknown = [option for word in words if re.match(r"--?\w", word)
                       and (option := word.partition("=")[0]) not in parser._option_string_actions]
            if unknown:
                problems.append(f"{where}: no option {', '.join(unknown)}")
    assert problems == [], "README inline commands with options that do not exist:\n" + "\n".join(problems)


def python_snippets() -> list[tuple[str, str, list[str]]]:
    """("FILE:LINE", code, what it prints by the README) of each Python example of the READMEs: a code block that
    starts with `from`/`import` (what it prints: the comment on each `print(...)` line), and `python -c "..."`
    (what it prints: the comment lines after it)."""
    snippets = []
    for path in READMES:
        for first, block in code_blocks(path):
            where, text = f"{path.relative_to(ROOT)}:{first}", "\n".join(block)
            if re.match(r"(from|import) \w", block[0]):
                printed = [m[1] for line in block if (m := re.match(r"print\(.*\)\s+# (.*)", line))]
                snippets.append((where, text, printed))
            elif block[0].startswith("python -c "):
                words = shlex.split(text, comments=True)
                printed = [line.strip().removeprefix("# ") for line in block if line.strip().startswith("#")]
                snippets.append((where, words[2], printed))
    return snippets


@pytest.mark.parametrize("where, code, printed", [pytest.param(*example, id=example[0])
                                                   for example in python_snippets()])
def test_readme_python_examples_print_what_they_say(where, code, printed, monkeypatch, capsys):
    """Each Python example runs from the repository root and prints what its comment says it prints (the comment
    is that text, then optionally `: explanation`)."""
    missing = [name for name in re.findall(r"""['"]([\w./-]+\.(?:lcq|pt|json|npz))['"]""", code)
               if not (ROOT / name).exists()]
    if missing:
        pytest.skip(f"{where} needs {', '.join(missing)}, which the repository does not hold")
    monkeypatch.chdir(ROOT)
    exec(compile(code, where, "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(printed), f"{where} printed {out}; its comments say {printed}"
    for line, says in zip(out, printed):
        assert says == line or says.startswith(line + ":"), f"{where} printed {line!r}; its comment says {says!r}"
