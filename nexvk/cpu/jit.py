"""numba for the cpu backend: imported here only, with its on-disk kernel cache and threads.

Compiled kernels are cached on disk (cache=True), so a second process starts without
compiling: beside the modules when the package directory is writable, else under the user
cache directory (nexvk.model.fetch.home()/numba), set before numba is imported.
fastmath: reassociation and contraction (what lets LLVM vectorize float sums) but not
"no NaNs / no infs", so non-finite values propagate as in numpy.
Threads wait passively between parallel regions (OMP_WAIT_POLICY=passive unless set): with
numba's OpenMP layer, threads spinning after each region took the cores from the thread doing
the work whenever the machine had other load (decode 1.1 tok/s with spinning, 13.9 passive,
11.3 on one thread; SmolLM2, 2 threads, load average 13 here; with one other busy process, a
short spin, GOMP_SPINCOUNT=10000, still made 2048-key decode steps 2.4x slower). The price
is ~50-100 us to wake a sleeping thread per region: on a machine left to nexvk,
GOMP_SPINCOUNT=10000 decoded SmolLM2 at 2048 keys 1.3-1.5x as fast in a quiet
side-by-side pair (docs/cpu.md, Threads).
"""
import os

from nexvk.model.fetch import home


def _cache_dir():
    if not os.environ.get("NUMBA_CACHE_DIR") and \
            not os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK):
        os.environ["NUMBA_CACHE_DIR"] = str(home() / "numba")


_cache_dir()
if "OMP_WAIT_POLICY" not in os.environ:  # idle numba threads sleep instead of spinning
    os.environ["OMP_WAIT_POLICY"] = "passive"
    os.environ["NEXVK_OMP_WAIT_POLICY_SET"] = "1"  # so bench's llama.cpp child can undo it
try:
    import numba
except ImportError:  # the backend registry says why and falls back to numpy
    numba = None

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def available():
    """Whether numba imports (the cpu backend needs it)."""
    return numba is not None


def kernel(fn=None, parallel=False):
    """A compiled kernel: numba.njit with the disk cache, fastmath as above, the GIL released."""
    def wrap(f):
        return numba.njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=parallel)(f)
    return wrap(fn) if fn is not None else wrap


def max_threads():
    return numba.config.NUMBA_NUM_THREADS


def check_threads(n):
    """n, or every core for None; ValueError unless an integer in 1..the cores numba started
    with."""
    if n is None:
        return max_threads()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_threads():
        raise ValueError(f"threads must be an integer in 1..{max_threads()}, got {n!r}")
    return n


def set_threads(n):
    """Threads for the compiled kernels (check_threads(n)); returns the count."""
    n = check_threads(n)
    numba.set_num_threads(n)
    return n


_blas = []  # the threadpoolctl controller, made on first use


def one_blas_thread():
    """A context in which numpy's BLAS (OpenBLAS) runs on the calling thread alone: the cpu
    backend owns the cores with its own threads (mul_mm.py says why)."""
    if not _blas:
        from threadpoolctl import ThreadpoolController
        _blas.append(ThreadpoolController())
    return _blas[0].limit(limits=1, user_api="blas")
