"""The serving engine without HTTP: a request that fails gets its error and the others go
on; a request cancelled while queued never takes a sequence."""
import queue

import pytest

from nexvk.model.model import Model
from nexvk.serve.engine import Engine


@pytest.fixture
def engine(tiny):
    e = Engine(Model.load(tiny(), ctx=64, k_type="turbo3", v_type="turbo3"), 2)
    e.start()
    yield e
    e.close()


def _run(engine, ids, max_tokens=4, **kw):
    """Submit and wait: (text, last event)."""
    events = queue.Queue()
    engine.submit(ids, max_tokens, events.put, 0.0, **kw)
    text = []
    while True:
        ev = events.get(timeout=120)
        if ev[0] != "text":
            return "".join(text), ev
        text.append(ev[1])


def test_a_failing_request_ends_alone(engine):
    good = _run(engine, [5, 6, 7])
    calls = []

    def breaking(real):
        def forward(*a, **kw):  # the next prefill fails, on whichever sequence it runs
            calls.append(a)
            if len(calls) == 1:
                raise RuntimeError("device lost")
            return real(*a, **kw)
        return forward

    for slot in engine.slots:
        slot.seq.forward = breaking(slot.seq.forward)
    try:
        _, ev = _run(engine, [5, 6, 7])
    finally:
        for slot in engine.slots:
            del slot.seq.forward  # the method again
    assert calls and ev == ("error", "RuntimeError: device lost")
    assert _run(engine, [5, 6, 7]) == good and engine.busy() == 0
    assert good[1][:2] == ("done", "length") and good[1][2]["completion_tokens"] == 4


def test_a_request_cancelled_in_the_queue_takes_no_sequence(tiny):
    e = Engine(Model.load(tiny(), ctx=64), 1)  # not started: requests wait in the queue
    events = queue.Queue()
    req = e.submit([1, 2], 3, events.put)
    req.cancel()
    e.start()
    try:
        assert _run(e, [3, 4], 2)[1][1] == "length"
        assert e.cancelled == 1 and events.empty()
    finally:
        e.close()


def test_bad_submissions_are_refused(engine):
    for ids, n, msg in (([], 4, "empty"), ([1] * 64, 4, "prompt has 64 tokens"),
                        ([1], 0, "max_tokens")):
        with pytest.raises(ValueError, match=msg):
            engine.submit(ids, n, print)
    with pytest.raises(ValueError, match="top_p"):
        engine.submit([1], 2, print, top_p=0.0)
