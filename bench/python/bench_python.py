"""bench/python: the larder module against what hand-written Python managers do.

1. Warm: `with m.acquire(name) as model` on a loaded component against a dict lookup under
   a threading.Lock (`with lock: model = cache[name]`), per iteration, median of the
   repeats; target ratio <= 2.
2. Cold herd: 64 threads released together on one cold component whose load takes 50 ms.
   larder loads it once; a naive check-then-load manager (`if name not in cache:
   cache[name] = load()`) loads it N times.

    PYTHONPATH=build/python /usr/bin/python3 bench/python/bench_python.py [ITERATIONS]
"""
import statistics
import sys
import threading
import time

import larder

ITER = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
REPEATS = 7
THREADS = 64


def per_iter_ns(fn):
    t0 = time.perf_counter_ns()
    fn(ITER)
    return (time.perf_counter_ns() - t0) / ITER


def warm():
    m = larder.Manager(budget="64MiB", ttl="never")
    m.define("model", lambda: {"weights": bytearray(1024)}, memory="1MiB")
    with m.acquire("model"):
        pass
    cache = {"model": {"weights": bytearray(1024)}}
    lock = threading.Lock()

    def larder_loop(n):
        acquire = m.acquire
        for _ in range(n):
            with acquire("model") as model:
                pass

    def dict_loop(n):
        for _ in range(n):
            with lock:
                model = cache["model"]

    ratios, ln, dn = [], [], []
    for _ in range(REPEATS):
        a = per_iter_ns(larder_loop)
        b = per_iter_ns(dict_loop)
        ln.append(a)
        dn.append(b)
        ratios.append(a / b)
    m.close()
    r = statistics.median(ratios)
    print(f"warm: larder {statistics.median(ln):.0f} ns, dict+lock {statistics.median(dn):.0f} ns "
          f"per iteration; ratio median {r:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f}; "
          f"target <= 2)")
    return r


def slow_load(counter, lock):
    def load():
        with lock:
            counter[0] += 1
        time.sleep(0.05)  # reading weights from disk
        return object()
    return load


def herd(acquire_one):
    barrier = threading.Barrier(THREADS)
    errors = []

    def racer():
        barrier.wait()
        try:
            acquire_one()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=racer) for _ in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def cold():
    lock = threading.Lock()
    n_larder = [0]
    m = larder.Manager(budget="64MiB")
    m.define("model", slow_load(n_larder, lock), memory="1MiB")

    def with_larder():
        with m.acquire("model", timeout=60):
            pass

    herd(with_larder)
    m.close()

    n_naive = [0]
    cache = {}
    load = slow_load(n_naive, lock)

    def naive():
        if "model" not in cache:  # check, then load: every racer that checks first loads
            cache["model"] = load()
        return cache["model"]

    herd(naive)
    print(f"cold herd of {THREADS} threads: larder loaded {n_larder[0]} time(s), "
          f"the naive check-then-load manager N = {n_naive[0]}")
    return n_larder[0], n_naive[0]


def main():
    r = warm()
    once, naive = cold()
    print(f"summary: warm acquire {r:.2f}x a dict lookup under a lock (target <= 2); "
          f"cold herd: {once} load vs N = {naive} naive")
    return 0 if once == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
