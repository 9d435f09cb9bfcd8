"""What the scorer refuses from a backend (server.backends.base.bad_read): pure, no model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.backends.base import bad_read
from server.scoring import TokenReads

BATCH = [TokenReads(input_ids=(1, 2, 3), reads=((3, (7, 8, 9)), (2, (4,)))),
         TokenReads(input_ids=(1, 2), reads=((2, (7, 8)),))]


def good():
    return [[np.log([0.2, 0.3, 0.1]), np.array([-math.inf])], [np.log([0.5, 0.5])]]


def test_log_probabilities_of_what_was_asked_are_a_valid_read():
    assert bad_read(BATCH, good()) is None


@pytest.mark.parametrize("corrupt, problem", [
    (lambda r: r[0].__setitem__(0, np.array([np.nan, -1.0, -2.0])), "non-finite"),
    (lambda r: r[1].__setitem__(0, np.array([math.inf, -1.0])), "non-finite"),
    (lambda r: r[0].__setitem__(0, np.array([-1.0, -2.0])), "shape"),
    (lambda r: r[0].pop(), "1 reads for 2 asked"),
    (lambda r: r.pop(), "1 results for 2 sequences"),
    (lambda r: r[1].__setitem__(0, np.array([-0.1, -0.1])), "above 0 in total"),
])
def test_anything_else_is_named(corrupt, problem):
    results = good()
    corrupt(results)
    assert problem in bad_read(BATCH, results)
