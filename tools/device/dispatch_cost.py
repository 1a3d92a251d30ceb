"""What one small dispatch and one barrier cost on a device, as a decode step pays them.

A GPU decode step of SmolLM2 is 513 small dispatches with a barrier between each two
(docs/devices.md); whether fusing dispatches or dropping barriers is the next lever depends on
which of the two costs. Three graphs of N `add` dispatches of SIZE floats, each run as one
submission like a step: "chain" (every dispatch on the buffer the last one wrote: a barrier
between each two), "independent" (N buffers: no barrier) and "one" (a single dispatch: the
submission's own cost). Prints the median time per submission over REPS runs and per dispatch
after subtracting "one", and checks the sums the kernels wrote.
Usage: python tools/device/dispatch_cost.py [N=256] [SIZE=1024] [REPS=30, at most 50]
"""
import sys

import numpy as np

from nexvk.bench import timeit
from nexvk.device.manager import get_device
from nexvk.kernels import add, dyn


def timed(graph, reps):
    """Median seconds of graph.run() after one warm-up run (which records it)."""
    return timeit(graph.run, repeat=reps)[0]


def main():
    n, size, reps = ([int(a) for a in sys.argv[1:]] + [256, 1024, 30][len(sys.argv) - 1:])[:3]
    reps = min(reps, 50)   # bench.timeit stops at 50 calls; the sums below count 1 + reps runs
    dev = get_device()
    d = dev.pool.get("dc/dyn", dyn.size(1), np.uint32, kind="device")
    dyn.fill(d.host, 1, 0)
    y = dev.pool.get("dc/y", size, np.float32, kind="device")
    y.host[:] = 1
    xs = [dev.pool.get(f"dc/x{i}", size, np.float32, kind="device") for i in range(n)]
    for x in xs:
        x.host[:] = 0
    dev.graph().upload(d, y, *xs).run()

    def graph(targets):
        g = dev.graph()
        for x in targets:
            for pipe, push in add.dispatches(dev, x, y, d, size, 1):
                g.dispatch(pipe, push)
        return g.prepare()

    one = timed(graph(xs[:1]), reps)
    chain, indep = graph([xs[0]] * n), graph(xs)
    t_chain, t_indep = timed(chain, reps), timed(indep, reps)
    dev.graph().download(*xs).run()
    want0 = (1 + reps) * (n + 2)   # x0 is in all three graphs, each run 1 + reps times
    ok = xs[0].host[0] == want0 and all(x.host[0] == 1 + reps for x in xs[1:])
    print(f"device: {dev.name}; {n} dispatches of {size} floats, median of {reps} submissions")
    print(f"one dispatch:       {one * 1e6:9.1f} us a submission")
    print(f"chain (barriers):   {t_chain * 1e6:9.1f} us a submission, "
          f"{(t_chain - one) / (n - 1) * 1e6:6.2f} us per extra dispatch + barrier")
    print(f"independent:        {t_indep * 1e6:9.1f} us a submission, "
          f"{(t_indep - one) / (n - 1) * 1e6:6.2f} us per extra dispatch")
    print(f"sums {'correct' if ok else 'WRONG'} (x0 {xs[0].host[0]:.0f}, want {want0})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
