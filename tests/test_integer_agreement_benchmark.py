"""benchmarks/integer_agreement.py: its options."""

import pytest
from helpers import load_benchmark


@pytest.mark.parametrize("images", ["0", "-5"])
def test_images_below_one_are_refused(tmp_path, capsys, images):
    """--images -5 evaluated all but the last 5 test images (a slice x[:-5]) and --images 0 all of them, both
    recorded as if asked for; "first N test images" needs N >= 1."""
    with pytest.raises(SystemExit) as e:
        load_benchmark("integer_agreement").main(["--runs", str(tmp_path), "--images", images])
    assert e.value.code == 2 and "--images must be >= 1" in capsys.readouterr().err
