"""server/admission.py: the bounds on requests' items and labeler work in flight, refused at once
with 429 and a Retry-After past them; server/request_work.py: the work a request asks for.
On a real server: test_admission_e2e.py."""

from __future__ import annotations

import contextlib

import pytest

from server.admission import Admission
from server.errors import Overloaded
from server.request_work import CHARS_PER_TOKEN, ReadShape, direct_work, pair_work, tokenising_work


def test_items_in_flight_are_bounded_and_refused_at_once_with_retry_after():
    admission = Admission(max_items=5, max_work=10**9)
    with admission.admit(3, 1, lambda: 7):
        with pytest.raises(Overloaded) as exc, admission.admit(3, 1, lambda: 7):
            pass
        err = exc.value
        assert err.status_code == 429 and err.code == "overloaded"
        assert err.headers["Retry-After"] == "7" and "3 of 5 items in flight" in err.message
        assert admission.in_flight == 3  # the refused request left nothing behind
        with admission.admit(2, 1, lambda: 7):  # what still fits is admitted
            assert admission.in_flight == 5
    assert admission.in_flight == 0
    with admission.admit(5, 1, lambda: 7):  # a request as large as the bound, alone: admitted
        pass


def test_work_in_flight_is_bounded_but_a_request_alone_is_always_admitted():
    admission = Admission(max_items=100, max_work=1_000)
    with admission.admit(1, 50_000, lambda: 3):  # far over the bound, but nothing else is in flight
        with pytest.raises(Overloaded, match=r"about 10 tokens\) does not fit beside the 50,000 in flight "
                                             r"\(--max-queue-tokens 1,000\)") as exc, admission.admit(1, 10, lambda: 3):
            pass
        assert exc.value.headers["Retry-After"] == "3"
    with admission.admit(1, 600, lambda: 3), admission.admit(1, 300, lambda: 3):
        assert admission.work_in_flight == 900
        with pytest.raises(Overloaded), admission.admit(1, 101, lambda: 3):
            pass
    assert (admission.in_flight, admission.work_in_flight, admission.requests) == (0, 0, 0)


def test_a_tenth_of_each_bound_is_kept_for_small_requests():
    # A flood of large requests fills nine tenths of the queue; a single item still gets in.
    admission = Admission(max_items=2048, max_work=4_000_000)
    with contextlib.ExitStack() as held:
        for _ in range(7):
            held.enter_context(admission.admit(256, 100_000, lambda: 1))
        with pytest.raises(Overloaded, match="a tenth is kept for small requests"), admission.admit(256, 1, lambda: 1):
            pass
        with admission.admit(1, 300, lambda: 1):  # small: it may use the reserve
            assert admission.in_flight == 7 * 256 + 1
    # A bound too small to split keeps nothing back: two requests of 4 fill a queue of 8.
    small = Admission(max_items=8, max_work=10**6)
    with small.admit(4, 10, lambda: 1), small.admit(4, 10, lambda: 1):
        assert small.in_flight == 8


def test_items_and_work_are_released_when_the_request_fails():
    admission = Admission(max_items=2, max_work=10)
    with pytest.raises(RuntimeError), admission.admit(2, 10, lambda: 1):
        raise RuntimeError("the backend failed")
    assert (admission.in_flight, admission.work_in_flight) == (0, 0)


def test_work_counts_what_an_item_costs_under_its_rubric():
    plain, item = ReadShape(fixed_tokens=100), ("p" * 30, "r" * 60)
    assert direct_work([item], plain, 4096) == 100 + 90 // CHARS_PER_TOKEN
    assert direct_work([item], plain, 110) == 110  # at most the input budget, as the server truncates
    assert direct_work([item], ReadShape(100, principles=3), 4096) == 3 * 130
    # A reasoning rubric: each sample generates its rationale, then reads the label after it.
    assert direct_work([item], ReadShape(100, samples=2, max_rationale_tokens=50), 4096) == 2 * (130 + 100)
    # A pair is read in both orders, both responses in each input.
    assert pair_work([("p" * 30, "a" * 30, "b" * 30)], plain, 4096) == 2 * 130
    assert pair_work([("p" * 30, "a" * 30, "b" * 30)], plain, 4096, both_orders=False) == 130
    messages = [{"role": "user", "content": "p" * 30}]
    assert tokenising_work([(messages, "r" * 60)]) >= 30
