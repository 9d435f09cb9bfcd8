"""server/admission.py: the bound on requests' items in flight (ItemAdmission), refused at once
with 429 and a Retry-After past it. On a real server: test_admission_e2e.py."""

from __future__ import annotations

import pytest

from server.admission import ItemAdmission
from server.errors import Overloaded


def test_items_in_flight_are_bounded_and_refused_at_once_with_retry_after():
    admission = ItemAdmission(max_items=5)
    with admission.admit(3, lambda: 7):
        with pytest.raises(Overloaded) as exc, admission.admit(3, lambda: 7):
            pass
        err = exc.value
        assert err.status_code == 429 and err.code == "overloaded"
        assert err.headers["Retry-After"] == "7" and "3 of 5 items in flight" in err.message
        assert admission.in_flight == 3  # the refused request left nothing behind
        with admission.admit(2, lambda: 7):  # what still fits is admitted
            assert admission.in_flight == 5
    assert admission.in_flight == 0
    with admission.admit(5, lambda: 7):  # a request as large as the bound, alone: admitted
        pass


def test_items_are_released_when_the_request_fails():
    admission = ItemAdmission(max_items=2)
    with pytest.raises(RuntimeError), admission.admit(2, lambda: 1):
        raise RuntimeError("the backend failed")
    assert admission.in_flight == 0
