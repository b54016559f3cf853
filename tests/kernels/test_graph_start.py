"""kiln.kernels.graph_start: one turn per capture, nested captures restore the outer
one's state, and nothing outside a capture."""

from __future__ import annotations

from kiln.kernels import graph_start


def test_one_turn_per_capture():
    assert not graph_start.take()
    with graph_start.capturing():
        assert [graph_start.take() for _ in range(3)] == [True, False, False]
    assert not graph_start.take()


def test_state_restored_after_a_failed_capture():
    try:
        with graph_start.capturing():
            raise RuntimeError("capture failed")
    except RuntimeError:
        pass
    assert not graph_start.take()


def test_nested_capture_restores_the_outer_turn():
    with graph_start.capturing():
        with graph_start.capturing():
            assert graph_start.take()
        assert graph_start.take()  # the outer capture's first launch is still to come
        assert not graph_start.take()
