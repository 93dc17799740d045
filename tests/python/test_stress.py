"""Stress: Python threads and asyncio tasks race cold acquires, evictions, unloads and trims
on one manager while the load, unload and instance callables check the lifecycle
invariants from the inside:

  1. exactly one load per cold component: a load never starts while the same component
     is loading or loaded, and N racers of one cold component share one load;
  2. nothing leased is unloaded: an unload (or instance free) never sees a holder;
  3. the budget is never exceeded: the components being loaded or loaded never add up to
     more than it, and neither do the manager's reservations.

Any deadlock between the GIL and liblarder's locks shows as a hang (meson's timeout).
Under `make check-asan` the module is built with ASan+UBSan and this test runs with the
sanitizer runtime preloaded into /usr/bin/python3 and leak detection off (the interpreter
keeps its own allocations at exit); see tests/python/meson.build."""
import asyncio
import random
import sys
import threading
import unittest

import larder
from util import Gate

MiB = 1 << 20
BUDGET = 64 * MiB
SIZE = 10 * MiB
N_COMPONENTS = 12   # 120 MiB declared against a 64 MiB budget: evictions all along
THREADS = 12
OPS = 400
TASKS = 24

OK_ERRORS = (larder.TimeoutError, larder.DrainingError, larder.BusyError, larder.BudgetError)


class World:
    def __init__(self):
        self.lock = threading.Lock()
        self.state = {}      # name -> "loading" | "loaded"
        self.holders = {}    # model token -> live leases (counted while leased)
        self.charged = 0     # bytes of components loading or loaded
        self.loads = {}
        self.violations = []

    def fail(self, what):
        with self.lock:
            self.violations.append(what)

    def load(self, name):
        def load():
            with self.lock:
                if name in self.state:
                    self.violations.append(f"{name}: load while {self.state[name]}")
                self.state[name] = "loading"
                self.charged += SIZE
                if self.charged > BUDGET:
                    self.violations.append(f"budget exceeded: {self.charged} > {BUDGET}")
                self.loads[name] = self.loads.get(name, 0) + 1
            token = {"name": name, "weights": bytearray(64 * 1024)}
            with self.lock:
                self.state[name] = "loaded"
                self.holders[id(token)] = 0
            return token
        return load

    def unload(self, token):
        name = token["name"]
        with self.lock:
            if self.holders.pop(id(token), 0):
                self.violations.append(f"{name}: unloaded while leased")
            if self.state.get(name) != "loaded":
                self.violations.append(f"{name}: unload while {self.state.get(name)}")
            self.state.pop(name, None)
            self.charged -= SIZE

    def hold(self, token, d):
        with self.lock:
            self.holders[id(token)] = self.holders.get(id(token), 0) + d


class Stress(unittest.TestCase):
    def test_race(self):
        w = World()
        m = larder.Manager(budget=BUDGET, ttl="5m", loader_threads=4)
        names = [f"c{i}" for i in range(N_COMPONENTS)]
        for i, n in enumerate(names):
            if i % 3 == 2:  # pooled: two instances on top of the model
                m.define(n, w.load(n), w.unload, memory=SIZE, instances=2,
                         new_instance=lambda model: [model],
                         free_instance=lambda model, inst: None)
            else:
                m.define(n, w.load(n), w.unload, memory=SIZE)

        def use(value, d):
            token = value[0] if isinstance(value, list) else value
            w.hold(token, d)

        def thread_main(seed):
            rnd = random.Random(seed)
            for _ in range(OPS):
                op = rnd.random()
                try:
                    if op < 0.80:
                        with m.acquire(rnd.choice(names), timeout=30) as v:
                            use(v, +1)
                            if rnd.random() < 0.1:
                                m.registry()
                            use(v, -1)
                    elif op < 0.90:
                        m.unload(rnd.choice(names), timeout=0.05)
                    elif op < 0.95:
                        with m.acquire_set(rnd.sample(names, 2), timeout=30) as vals:
                            for v in vals:
                                use(v, +1)
                            for v in vals:
                                use(v, -1)
                    else:
                        m.trim()
                except OK_ERRORS:
                    pass
                except Exception as e:  # noqa: BLE001 - any other error is a finding
                    w.fail(f"thread: {type(e).__name__}: {e}")

        async def task_main(seed):
            rnd = random.Random(seed)
            for _ in range(OPS // 5):
                try:
                    async with m.acquire_async(rnd.choice(names), timeout=30) as v:
                        use(v, +1)
                        await asyncio.sleep(0)
                        use(v, -1)
                except OK_ERRORS:
                    pass
                except Exception as e:  # noqa: BLE001
                    w.fail(f"task: {type(e).__name__}: {e}")

        def loop_main():
            async def run():
                await asyncio.gather(*(task_main(1000 + i) for i in range(TASKS)))
            asyncio.run(run())

        stop = threading.Event()

        def monitor():
            while not stop.is_set():
                mem = m.memory(history=0)
                if mem["reserved_bytes"] > mem["budget_bytes"]:
                    w.fail(f"reserved {mem['reserved_bytes']} > budget {mem['budget_bytes']}")
                stop.wait(0.002)

        threads = [threading.Thread(target=thread_main, args=(i,)) for i in range(THREADS)]
        threads.append(threading.Thread(target=loop_main))
        mon = threading.Thread(target=monitor)
        mon.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        mon.join()
        reg = m.registry()
        self.assertEqual(sum(r["leases"] for r in reg.values()), 0)
        evictions = sum(r["evictions"] for r in reg.values())
        self.assertGreater(evictions, 0, "the budget never forced an eviction")
        m.close()
        self.assertEqual(w.violations, [])
        self.assertEqual(w.state, {})  # close unloaded everything
        print(f"loads {sum(w.loads.values())}, evictions {evictions}", file=sys.stderr)

    def test_cold_herd_single_flight(self):
        m = larder.Manager(budget=BUDGET)
        for rnd in range(5):
            gate = Gate({"round": rnd})
            name = f"herd{rnd}"
            m.define(name, gate, memory=SIZE)
            got, errors = [], []

            def racer():
                try:
                    with m.acquire(name, timeout=60) as v:
                        got.append(v)
                except Exception as e:  # noqa: BLE001
                    errors.append(e)

            async def tasks():
                async def one():
                    async with m.acquire_async(name, timeout=60) as v:
                        got.append(v)
                await asyncio.gather(*(one() for _ in range(32)))

            ts = [threading.Thread(target=racer) for _ in range(32)]
            ts.append(threading.Thread(target=lambda: asyncio.run(tasks())))
            for t in ts:
                t.start()
            self.assertTrue(gate.started.wait(60))
            gate.opened.set()
            for t in ts:
                t.join()
            self.assertEqual(errors, [])
            self.assertEqual(gate.calls, 1)
            self.assertEqual(len(got), 64)
            self.assertTrue(all(v is got[0] for v in got))
            m.unload(name)
        m.close()


if __name__ == "__main__":
    unittest.main()
