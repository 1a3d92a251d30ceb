"""The serving engine: N sequence slots over one copy of the weights, fed from a queue.

One worker thread owns the model. Each turn it admits queued requests into free slots
(prefilling each prompt in its slot's own cache), then runs one batched decode step for every
active slot (Batch.step), samples each slot's next token with the request's own Sampler and
hands the new text to the request. Requests beyond N wait in the queue; a cancelled request
(its client went away) frees its slot at the next turn. A request that fails gets its error;
the worker goes on with the others.
NOTE: a prompt is prefilled whole while the other slots wait (no chunked prefill).
"""
import itertools
import queue
import threading

from nexvk.model.batch import Batch
from nexvk.model.sample import Sampler


class Request:
    """One generation: prompt ids, at most max_tokens new tokens, stop strings, and
    emit(event) called from the worker thread with ("text", piece), then ("done",
    finish_reason, usage) or ("error", message)."""

    _ids = itertools.count()

    def __init__(self, ids, max_tokens, sampler, stop, emit):
        self.id = next(self._ids)
        self.ids, self.max_tokens, self.sampler, self.emit = list(ids), max_tokens, sampler, emit
        self.stop = [s for s in stop if s]
        self.out, self.sent = [], 0  # generated ids; characters of their text already emitted
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()

    def usage(self):
        return {"prompt_tokens": len(self.ids), "completion_tokens": len(self.out),
                "total_tokens": len(self.ids) + len(self.out)}


class Slot:
    """A sequence (a Model sharing the weights, with its own cache) and its request."""

    def __init__(self, seq):
        self.seq, self.req, self.next = seq, None, None


class Engine:
    def __init__(self, model, n_parallel):
        if not (isinstance(n_parallel, int) and n_parallel >= 1):
            raise ValueError(f"the number of parallel sequences must be >= 1, got {n_parallel!r}")
        self.model, self.tok = model, model.tokenizer
        self.slots = [Slot(model)] + [Slot(model.with_cache()) for _ in range(n_parallel - 1)]
        self.batch = Batch(model, n_parallel)
        self.pending = queue.Queue()
        self.cancelled = 0  # requests whose client went away before they ended
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nexvk-engine", daemon=True)

    @property
    def n_parallel(self):
        return len(self.slots)

    def busy(self):
        return sum(s.req is not None for s in self.slots)

    def start(self):
        self._thread.start()

    def close(self):
        self._closed.set()
        self.pending.put(None)  # wakes an idle worker
        self._thread.join()

    def submit(self, ids, max_tokens, emit, temperature=1.0, top_p=1.0, seed=None, stop=()):
        """Queue a generation whose events go to emit (Request); ValueError for a bad setting
        or a prompt that leaves no room in the context. Returns the Request."""
        ids = list(ids)
        ctx = self.model.ctx
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= ctx:
            raise ValueError(f"the prompt has {len(ids)} tokens, but a sequence holds at most "
                             f"{ctx} (prompt and reply together): shorten it, or start the "
                             "server with a larger -c")
        if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens >= 1):
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        room = ctx - len(ids)
        sampler = Sampler(temperature, 0, top_p, seed)
        req = Request(ids, min(max_tokens or room, room), sampler, stop, emit)
        self.pending.put(req)
        return req

    # ---- the worker thread ----------------------------------------------------------------
    def _run(self):
        while not self._closed.is_set():
            free = [s for s in self.slots if s.req is None]
            while free:
                try:  # block only when nothing is running
                    req = self.pending.get(block=len(free) == len(self.slots))
                except queue.Empty:
                    break
                if req is None:  # close()
                    return
                if req.cancelled.is_set():
                    self.cancelled += 1
                else:
                    self._start(free.pop(), req)
            self._decode()

    def _start(self, slot, req):
        """Prefill req's prompt in slot's sequence and take its first token."""
        slot.req = req
        try:
            slot.seq.reset()
            logits = slot.seq.forward(req.ids, 0, last_only=True)[0]
            self._take(slot, req.sampler(logits))
        except Exception as e:  # a request's failure is its own
            self._finish(slot, ("error", f"{type(e).__name__}: {e}"))

    def _decode(self):
        for s in self.slots:  # a client that went away frees its slot
            if s.req is not None and s.req.cancelled.is_set():
                self.cancelled += 1
                self._finish(s, None)
        active = [s for s in self.slots if s.req is not None]
        if not active:
            return
        try:
            logits = self.batch.step([s.seq for s in active], [s.next for s in active])
        except Exception as e:
            for s in active:
                self._finish(s, ("error", f"{type(e).__name__}: {e}"))
            return
        for i, s in enumerate(active):
            try:
                self._take(s, s.req.sampler(logits[i]))
            except Exception as e:
                self._finish(s, ("error", f"{type(e).__name__}: {e}"))

    def _take(self, slot, token):
        """Add a sampled token to slot's request: emit the text it completes, finish on an
        end-of-text token, a stop string or the token limit, else queue it for the next step."""
        req = slot.req
        if token in self.tok.stop_ids:
            return self._finish(slot, self._flush(req, None) or ("done", "stop", req.usage()))
        req.out.append(token)
        done = self._flush(req, self.tok.decode(req.out))
        if done:
            return self._finish(slot, done)
        if len(req.out) >= req.max_tokens:
            return self._finish(slot, self._flush(req, None) or ("done", "length", req.usage()))
        slot.next = token

    def _flush(self, req, text):
        """Emit what of the text is final (text None: all of it); ("done", "stop", usage)
        when a stop string ends it. Text that could be the start of a stop string, or that
        ends inside a multi-byte character, waits for the next token."""
        final = text is None
        if final:
            text = self.tok.decode(req.out)
        cut = min((i for i in (text.find(s, max(0, req.sent - len(s))) for s in req.stop)
                   if i >= 0), default=-1)
        if cut >= 0:
            self._emit_text(req, text[:cut])
            return "done", "stop", req.usage()
        if not final:
            hold = max((k for s in req.stop for k in range(1, len(s))
                        if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold]
            if text.endswith("\ufffd"):
                return None
        self._emit_text(req, text)
        return None

    def _emit_text(self, req, text):
        if len(text) > req.sent:
            req.emit(("text", text[req.sent:]))
            req.sent = len(text)

    def _finish(self, slot, event):
        req, slot.req, slot.next = slot.req, None, None
        if event is not None:
            req.emit(event)
