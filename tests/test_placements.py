"""nextpnr placements side by side (:mod:`boards.placements`) with the fake tools of :mod:`fake_toolchain`: seeds 1
and 2 at once and the faster kept under the stage's own names, the next seeds where no placement routes, a seed
asked for alone, a deadline or SIGTERM stopping every placement's tool, and ``lcq build``'s defaults."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_toolchain import gone_soon

from boards.placements import place_and_route, seed_rounds
from boards.stages import BuildError, BuildTimeout, Stage

DATA = Path(__file__).parent / "data"
NEXTPNR = Stage("placement and routing", "nextpnr-ecp5",
                ("nextpnr-ecp5", "--quiet", "--report", "nextpnr-report.json", "--timing-allow-fail", "--log",
                 "top.tim", "--85k", "--json", "top.json", "--lpf", "top.lpf", "--textcfg", "top.config"), "top.tim")
NO_LEGAL_PLACEMENT = "Unable to find legal placement for all cells, design is probably at utilisation limit."


def report_at(tmp_path: Path, mhz: float) -> str:
    """A copy of the ULX3S-85F build's nextpnr report whose clock reached ``mhz``."""
    report = json.loads((DATA / "nextpnr-report-ulx3s-85f.json").read_text())
    for clock in report["fmax"].values():
        clock["achieved"] = mhz
    path = tmp_path / f"report-{mhz:g}.json"
    path.write_text(json.dumps(report))
    return str(path)


def place(tmp_path, **options):
    kwargs = dict(seed=None, width=2, family="ecp5", what="ulx3s-85f build", deadline=None, every=None,
                  stall_seconds=180.0)
    return place_and_route(NEXTPNR, tmp_path, dict(os.environ), **{**kwargs, **options})


def argv(tmp_path, seed):
    return eval((tmp_path / f"nextpnr-ecp5.seed{seed}.argv").read_text())


def test_seed_rounds():
    assert seed_rounds(None, 1) == [[None], [2], [3]]       # nextpnr's own seed first, as a single build always did
    assert seed_rounds(None, 2) == [[1, 2], [3, 4], [5, 6]]
    assert seed_rounds(7, 1) == [[7]]


def test_two_placements_run_side_by_side_and_the_faster_is_kept(tmp_path, fake_tools, monkeypatch, capsys):
    for seed in (1, 2):
        fake_tools(f"nextpnr-ecp5_SEED_{seed}", "Info: Routing complete.\n")
    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 50.0))
    monkeypatch.setenv("FAKE_REPORT_SEED_1", report_at(tmp_path, 95.0))
    monkeypatch.setenv("FAKE_REPORT_SEED_2", report_at(tmp_path, 102.5))
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ECP5_SEED_1", "1.5")
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ECP5_SEED_2", "1.5")
    placed = place(tmp_path)
    assert placed.seed == 2
    assert [(p["seed"], p["outcome"], p["fmax_mhz"]) for p in placed.placements] == [(1, "routed", 95.0),
                                                                                      (2, "routed", 102.5)]
    assert 1.5 <= placed.seconds["placement and routing"] < 2.9    # side by side: not 2 x 1.5 s
    for seed in (1, 2):
        args = argv(tmp_path, seed)
        assert [args[args.index(flag) + 1] for flag in ("--log", "--report", "--textcfg", "--seed", "--json")] == \
            [f"top.seed{seed}.tim", f"nextpnr-report.seed{seed}.json", f"top.seed{seed}.config", str(seed), "top.json"]
        assert (tmp_path / f"build.seed{seed}.log").read_text() == "nextpnr-ecp5 ran\n"
        assert not (tmp_path / f"top.seed{seed}.config").exists()
    # The kept placement's outputs under the stage's own names; the other's log and report stay, for reading.
    assert json.loads((tmp_path / "nextpnr-report.json").read_text())["fmax"]["$glbnet$clock.clk"]["achieved"] == 102.5
    assert (tmp_path / "top.config").exists() and (tmp_path / "top.tim").exists()
    assert not (tmp_path / "top.seed2.tim").exists() and (tmp_path / "top.seed1.tim").exists()
    assert (tmp_path / "nextpnr-report.seed1.json").exists()
    assert ("ulx3s-85f build: kept the placement of seed 2, Fmax 102.5 MHz (of seed 1: 95.0 MHz, seed 2: 102.5 MHz)"
            in capsys.readouterr().err)


def test_a_placement_far_behind_the_first_routed_one_is_stopped(tmp_path, fake_tools, monkeypatch, capsys):
    """Once a placement has routed, the others get PATIENCE of its time more: one still running then is stopped
    (its tool's process group killed), and the build goes on with those that routed."""
    import boards.placements

    monkeypatch.setattr(boards.placements, "PATIENCE", 0.25)
    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 90.0))
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ECP5_SEED_1", "2")
    monkeypatch.setenv("FAKE_SLEEP_NEXTPNR_ECP5_SEED_2", "60")
    t0 = time.monotonic()
    placed = place(tmp_path)
    assert time.monotonic() - t0 < 10
    assert placed.seed == 1 and [(p["seed"], p["outcome"]) for p in placed.placements] == [(1, "routed"),
                                                                                           (2, "stopped")]
    assert gone_soon(int((tmp_path / "nextpnr-ecp5.seed2.child").read_text()))
    err = capsys.readouterr().err
    assert "ulx3s-85f build: seed 1 routed; the placements still running get 25% of its 2 s more" in err
    assert "kept the placement of seed 1, Fmax 90.0 MHz (of seed 1: 90.0 MHz, seed 2: stopped)" in err


def test_where_no_placement_of_a_round_routes_the_next_seeds_are_tried(tmp_path, fake_tools, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 90.0))
    for seed in (1, 2):
        monkeypatch.setenv(f"FAKE_ERROR_NEXTPNR_ECP5_SEED_{seed}", "ERROR: " + NO_LEGAL_PLACEMENT)
        monkeypatch.setenv(f"FAKE_EXIT_NEXTPNR_ECP5_SEED_{seed}", "1")
    placed = place(tmp_path)
    assert placed.seed == 3      # seeds 3 and 4 reach the same Fmax: the lower seed is kept
    assert [(p["seed"], p["outcome"]) for p in placed.placements] == [
        (1, "placement failed"), (2, "placement failed"), (3, "routed"), (4, "routed")]
    assert ("ulx3s-85f build (seed 1): nextpnr's placement failed (Unable to find legal placement for all cells, "
            "design is probably at utilisation limit); ulx3s-85f build (seed 2): nextpnr's placement failed (Unable "
            "to find legal placement for all cells, design is probably at utilisation limit): placing and routing "
            "again with --seed 3, 4\n") in capsys.readouterr().err


def test_errors_that_are_not_the_placements_and_the_last_round(tmp_path, fake_tools, monkeypatch, capsys):
    """An error that is not the placement's (a tool that crashed) is raised at once, unless another placement of
    its round routed; where no round routes, the first error of the last is raised."""
    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 90.0))
    monkeypatch.setenv("FAKE_ERROR_NEXTPNR_ECP5_SEED_1", "ERROR: " + NO_LEGAL_PLACEMENT)
    monkeypatch.setenv("FAKE_EXIT_NEXTPNR_ECP5_SEED_1", "1")
    monkeypatch.setenv("FAKE_EXIT_NEXTPNR_ECP5_SEED_2", "1")
    with pytest.raises(BuildError, match=r"ulx3s-85f build \(seed 2\) failed \(exit status 1\)"):
        place(tmp_path)
    assert not (tmp_path / "nextpnr-ecp5.seed3.argv").exists()
    monkeypatch.delenv("FAKE_ERROR_NEXTPNR_ECP5_SEED_1")
    monkeypatch.setenv("FAKE_EXIT_NEXTPNR_ECP5_SEED_1", "3")     # a crash beside a placement that routes
    monkeypatch.setenv("FAKE_EXIT_NEXTPNR_ECP5_SEED_2", "0")
    placed = place(tmp_path)
    assert placed.seed == 2 and [p["outcome"] for p in placed.placements] == ["failed", "routed"]
    for seed in (1, 2):
        monkeypatch.setenv(f"FAKE_EXIT_NEXTPNR_ECP5_SEED_{seed}", "1")
        monkeypatch.setenv(f"FAKE_ERROR_NEXTPNR_ECP5_SEED_{seed}", "ERROR: " + NO_LEGAL_PLACEMENT)
    for seed in (3, 4, 5, 6):
        monkeypatch.setenv(f"FAKE_EXIT_NEXTPNR_ECP5_SEED_{seed}", "1")
        monkeypatch.setenv(f"FAKE_ERROR_NEXTPNR_ECP5_SEED_{seed}", "ERROR: " + NO_LEGAL_PLACEMENT)
    capsys.readouterr()
    with pytest.raises(BuildError, match=r"ulx3s-85f build \(seed 5\) failed"):
        place(tmp_path)
    err = capsys.readouterr().err
    assert "placing and routing again with --seed 3, 4\n" in err and "again with --seed 5, 6\n" in err


def test_a_seed_asked_for_is_placed_alone_under_the_stage_names(tmp_path, fake_tools, monkeypatch):
    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 90.0))
    placed = place(tmp_path, seed=7)
    assert placed.seed == 7 and [p["seed"] for p in placed.placements] == [7]
    args = argv(tmp_path, 7)
    assert [args[args.index(flag) + 1] for flag in ("--log", "--report", "--seed")] == \
        ["top.tim", "nextpnr-report.json", "7"]
    assert (tmp_path / "build.log").read_text() == "nextpnr-ecp5 ran\n"


def test_a_deadline_stops_every_placement(tmp_path, fake_tools, monkeypatch):
    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 90.0))
    for seed in (1, 2):
        monkeypatch.setenv(f"FAKE_SLEEP_NEXTPNR_ECP5_SEED_{seed}", "60")
    t0 = time.monotonic()
    with pytest.raises(BuildTimeout, match=r"ulx3s-85f build \(seed 1\) stopped at its time limit in placement"):
        place(tmp_path, deadline=t0 + 2)
    assert time.monotonic() - t0 < 15
    for seed in (1, 2):
        assert gone_soon(int((tmp_path / f"nextpnr-ecp5.seed{seed}.child").read_text()))


def test_sigterm_stops_every_placement(tmp_path, fake_tools, monkeypatch):
    """What benchmarks/board_builds.py does to a build past its time: SIGTERM to the builder, whose placements
    run on threads of their own; each placement's tool is stopped with its process group."""
    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 90.0))
    for seed in (1, 2):
        monkeypatch.setenv(f"FAKE_SLEEP_NEXTPNR_ECP5_SEED_{seed}", "60")
    script = ("import os, sys\nfrom boards.placements import place_and_route\nfrom boards.stages import BuildError, "
              f"Stage\nstage = Stage(*{tuple(NEXTPNR.__dict__.values())!r})\n"
              f"try:\n    place_and_route(stage, {str(tmp_path)!r}, dict(os.environ), seed=None, width=2, "
              "family='ecp5', what='b', deadline=None, every=None, stall_seconds=None)\n"
              "except BuildError as e:\n    print(e)\n    sys.exit(5)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).parent.parent)
    children = [tmp_path / f"nextpnr-ecp5.seed{seed}.child" for seed in (1, 2)]
    for _ in range(400):
        if all(c.exists() and c.read_text() for c in children):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 5 and "stopped by signal SIGTERM" in stdout
    assert all(gone_soon(int(c.read_text())) for c in children)


def test_lcq_build_places_twice_on_ecp5_and_once_on_ice40(tmp_path, fake_tools, monkeypatch):
    """``boards.build.build``'s default: two placements side by side on ECP5 (one per core, at most two), one on
    iCE40; a seed asked for is one placement, and more than one with it is refused."""
    pytest.importorskip("amaranth")
    from amaranth.hdl import Module

    from boards.build import build

    monkeypatch.setenv("FAKE_REPORT", report_at(tmp_path, 90.0))
    monkeypatch.setenv("FAKE_REPORT_SEED_2", report_at(tmp_path, 101.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    out = tmp_path / "ecp5"
    result = build(lambda platform, clk_hz: Module(), "ulx3s-85f", None, out, progress_every=None)
    assert result.seed == 2 and result.fmax_mhz == 101.0 and [p["seed"] for p in result.placements] == [1, 2]
    assert list(result.stage_seconds) == ["synthesis", "placement and routing", "packing"]
    assert json.loads((out / "report.json").read_text())["placements"] == result.placements
    assert eval((out / "ecppack.argv").read_text())[2] == "top.config" and (out / "top.bit").exists()
    assert (out / "build.log").read_text().splitlines() == ["yosys ran", "ecppack ran"]
    monkeypatch.setattr(os, "cpu_count", lambda: 1)     # one core: one placement
    assert [p["seed"] for p in build(lambda platform, clk_hz: Module(), "ulx3s-85f", None, out,
                                     progress_every=None).placements] == [None]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    fake_tools("yosys", (DATA / "yosys-stats-icebreaker.txt").read_text())     # iCE40 FFs: Yosys' statistics
    result = build(lambda platform, clk_hz: Module(), "icebreaker", None, tmp_path / "ice40", progress_every=None)
    assert [p["seed"] for p in result.placements] == [None]
    assert "--seed" not in eval((tmp_path / "ice40" / "nextpnr-ice40.argv").read_text())
    with pytest.raises(ValueError, match="placements 2: at least 1, and 1 with a seed"):
        build(lambda platform, clk_hz: Module(), "ulx3s-85f", None, out, seed=3, placements=2)


def test_lcq_build_placements_option(monkeypatch, capsys):
    """``lcq build --placements N`` reaches the build; with ``--seed`` and more than one it is refused, naming
    both; the report's table lists the placements tried."""
    import argparse

    from boards import cli
    from boards.report import format_table

    parser = argparse.ArgumentParser(prog="lcq")
    handlers = cli.add_parsers(parser.add_subparsers(dest="verb"))
    seen = {}
    monkeypatch.setattr(cli, "build_model", lambda *args, **kwargs: seen.update(kwargs) or {})
    assert handlers["build"](parser.parse_args(["build", "m.lcq", "--board", "ulx3s-85f", "--placements", "3",
                                                "--json"])) == 0
    assert (seen["placements"], seen["seed"]) == (3, None)
    args = parser.parse_args(["build", "m.lcq", "--board", "ulx3s-85f", "--placements", "2", "--seed", "4"])
    assert handlers["build"](args) == 2
    assert capsys.readouterr().err == ("lcq build: error: --seed 4 places once and --placements 2 tries seeds 1 to 2: "
                                       "give one of them\n")
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "m.lcq", "--board", "ulx3s-85f", "--placements", "0"])
    assert "argument --placements: must be an integer >= 1, not '0'" in capsys.readouterr().err
    report = {"board": "ulx3s-85f", "device": "LFE5U-85F", "fmax_mhz": 102.28, "pll_mhz": 100.0, "target_mhz": 100.0,
              "bitstream": "build/ulx3s-85f/top.bit", "seconds": 600.0, "resources": {}, "seed": 2,
              "placements": [{"seed": 1, "outcome": "routed", "fmax_mhz": 95.1, "seconds": 480.0},
                             {"seed": 2, "outcome": "routed", "fmax_mhz": 102.28, "seconds": 486.0}]}
    assert "\nplacements: seed 1 95.1 MHz, seed 2 102.28 MHz; kept seed 2\n" in format_table(report)
