"""What a layer engine keeps for every layer of a model at once, loaded before the images.

- ``"none"``: one layer's constants at a time; each layer run brings its weights, product
  tables and output-stage constants.
- ``"weights"``: every layer's weights; each layer run brings its tables and stage constants.
- ``"all"``: every layer's constants; each layer run brings only configuration and activations.
"""

RESIDENCY = ("none", "weights", "all")
DESCRIPTION = {"none": "one layer's constants at a time", "weights": "every layer's weights resident",
               "all": "every layer's constants resident"}


def check_residency(resident: str) -> None:
    """``ValueError`` naming the value unless ``resident`` is one of :data:`RESIDENCY`."""
    if resident not in RESIDENCY:
        raise ValueError(f"Residency must be one of {', '.join(map(repr, RESIDENCY))}, not {resident!r}")
