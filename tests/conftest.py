"""Shared test helpers as fixtures: each returns the function of :mod:`helpers` of its name
(imported when first asked for, so that sessions that need none do not import torch).

``def test_x(small_cnn, images): model = small_cnn((1, 8, 8), plan, seed=0); x = images(4, (1, 8, 8), seed=0)``.
"""

import os

import pytest

# ---- CPU threads ---------------------------------------------------------------------------------------------
# Under pytest-xdist (`-n auto`: one worker per core) each worker, and each `lcq`/benchmark subprocess a test starts,
# would run torch with one OpenMP thread per core: 2 workers on 2 cores kept 4 threads spinning on small tensors, and
# a 1-epoch digits run took 16 s instead of 4 s. So a worker and what it starts use one thread each, unless
# OMP_NUM_THREADS says otherwise (set here, before any test imports torch, so that torch reads it too).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def randomize():
    """:func:`helpers.randomize`: random BN statistics, compander slopes and clip values of a model."""
    from helpers import randomize
    return randomize


@pytest.fixture(scope="session")
def images():
    """:func:`helpers.images`: ``images(n, shape, seed)``, random uint8 images with an all-0 and an all-255 one."""
    from helpers import images
    return images


@pytest.fixture(scope="session")
def small_cnn():
    """:func:`helpers.small_cnn`: ``small_cnn(shape, plan, seed, widths=(4, 6, 8), act_alpha=2.0)``, randomized."""
    from helpers import small_cnn
    return small_cnn


@pytest.fixture
def ecp5_form(monkeypatch):
    """:func:`helpers.build_as_for_the_ecp5`, for this test: the hardware it elaborates takes the ECP5's form."""
    from helpers import build_as_for_the_ecp5
    build_as_for_the_ecp5(monkeypatch)


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """:func:`fake_toolchain.install`: the fake tools in tmp_path/bin, named by the tool variables; returns
    ``set_log(tool, text)``, which sets the log lines a tool writes."""
    from fake_toolchain import install
    return install(tmp_path, monkeypatch)


# ---- pytest-xdist (`pytest -n auto`) ----------------------------------------------------------------------
# Tests of one file share what may not be made twice at once: a simulator build directory in build/sim (the
# Verilator build of the digits CNN's 4 x 4 network core, the PE array's, `lcq board-sim`'s with its port and
# status files) or a module fixture (trained models). So under pytest-xdist each file runs on one worker
# (``--dist loadfile``), whatever ``--dist`` said (``load``, the default of ``-n``, would split them;
# ``loadgroup``'s marks do not work with pytest 9.2's node ids).

# Files that take the longest on a 2-core machine with cold simulator builds (December), longest first: under
# pytest-xdist they are started first and the short files fill in at the end. Only the order changes; a file
# not listed runs after these, in collection order.
LONGEST_FIRST = ("test_sim_engine.py", "test_compile_graph.py", "test_board_runtime.py", "test_sim_network.py",
                 "test_demo.py", "test_netlist.py", "test_board_pty.py", "test_cifar10_benchmark.py",
                 "test_user_model.py", "test_compiler.py", "test_hw_network.py", "test_hw_output_stage.py",
                 "test_sim_spram.py", "test_link.py", "test_sim_array.py", "test_ablations.py", "test_train.py")


def pytest_configure(config):
    """Under pytest-xdist: ``--dist loadfile`` (see above); the workers, which parse the command line anew,
    put :data:`LONGEST_FIRST` first (:func:`pytest_configure_node`, :func:`pytest_collection_modifyitems`)."""
    if getattr(config, "workerinput", None) is None and getattr(config.option, "dist", "no") not in ("no", "each"):
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False      # keep the order of the collection: longest files first


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist controller: tell each worker to collect the longest files first."""
    node.workerinput["lcq_longest_first"] = node.config.getvalue("dist") == "loadfile"


def pytest_collection_modifyitems(config, items):
    """On a pytest-xdist worker told so: the tests of :data:`LONGEST_FIRST` first, in its order (stable: the tests
    of a file keep theirs). Every worker sorts alike, so they collect the same list."""
    if not getattr(config, "workerinput", {}).get("lcq_longest_first"):
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
