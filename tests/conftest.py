"""Shared test helpers as fixtures: each returns the function of :mod:`helpers` of its name
(imported when first asked for, so that sessions that need none do not import torch).

``def test_x(small_cnn, images): model = small_cnn((1, 8, 8), plan, seed=0); x = images(4, (1, 8, 8), seed=0)``.
"""

import pytest


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
