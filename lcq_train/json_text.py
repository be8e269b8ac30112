"""JSON text of a file a user gives (no torch): parsed, or a ValueError saying why it cannot be.

:func:`json.loads` fails in three ways: JSONDecodeError (not JSON), RecursionError (arrays or objects
nested deeper than Python's recursion limit) and a bare ValueError (an integer of more digits than
Python converts); :func:`parse_json` turns each into a ValueError that its caller prefixes with the
file's name and what to do.
"""

from __future__ import annotations

import json
import sys


def parse_json(text: str):
    """The value of JSON ``text``; ValueError ``"it is not JSON (...)"`` or saying which limit it breaks."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"it is not JSON ({e})") from None
    except RecursionError:
        raise ValueError("its arrays and objects nest too deeply to read") from None
    except ValueError:
        raise ValueError(f"it holds an integer of more than {sys.get_int_max_str_digits()} digits") from None
