"""The larder module's API: definitions, leases, errors, sets, asyncio, control, the
registry and memory reports with larderd's fields, events, interrupts and shutdown."""
import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import unittest
import _thread

import larder
from util import Gate, wait_for

MiB = 1 << 20
# A sanitizer runtime preloaded by a sanitizer build's test run (tests/python/meson.build).
SANITIZER = next((s for s in ("libasan", "libtsan") if s in os.environ.get("LD_PRELOAD", "")),
                 None)

# The keys of one entry of larderd's GET /v1/models (src/daemon/routes.c).
MODEL_KEYS = {"name", "backend", "state", "draining", "pin", "preload", "priority", "ttl_ms",
              "expires_in_ms", "fallback", "instances", "leases", "waiters", "memory", "loads",
              "load_ms", "hits", "cold_starts", "evictions", "failures", "fallbacks_served",
              "last_error", "cooldown_ms", "gpu"}
MODEL_MEMORY_KEYS = {"estimate_bytes", "estimate_source", "measured_bytes", "measure_method",
                     "instance_bytes", "reserved_bytes", "last_returned_bytes", "leak_suspect"}
# The keys of larderd's GET /v1/memory, less its HTTP request accounting.
MEMORY_KEYS = {"budget_bytes", "reserved_bytes", "limit_bytes", "limit_source", "watermarks",
               "process", "cgroup", "psi", "psi_trigger", "gpus", "gpu_budgets", "history",
               "policy", "components"}


class Basics(unittest.TestCase):
    def setUp(self):
        self.m = larder.Manager(budget="256MiB", ttl="5m")

    def tearDown(self):
        self.m.close()

    def test_lazy_load_once_and_lease_value(self):
        calls = []
        self.m.define("a", lambda: calls.append(1) or {"k": 1}, memory="1MiB")
        self.assertEqual(calls, [])
        self.assertEqual(self.m.registry()["a"]["state"], "unloaded")
        with self.m.acquire("a") as v:
            self.assertEqual(v, {"k": 1})
            self.assertEqual(self.m.registry()["a"]["leases"], 1)
        with self.m.acquire("a") as v2:
            self.assertIs(v2, v)
        self.assertEqual(calls, [1])
        r = self.m.registry()["a"]
        self.assertEqual(r["state"], "ready")
        self.assertEqual(r["leases"], 0)
        self.assertEqual(r["loads"], 1)

    def test_lease_released_on_exception(self):
        self.m.define("a", lambda: object(), memory="1MiB")
        with self.assertRaises(ZeroDivisionError):
            with self.m.acquire("a"):
                1 / 0
        self.assertEqual(self.m.registry()["a"]["leases"], 0)
        lease = self.m.acquire("a")
        self.assertFalse(lease.released)
        self.assertEqual(lease.served_by, "a")
        lease.release()
        lease.release()
        self.assertTrue(lease.released)
        with self.assertRaises(RuntimeError):
            lease.value

    def test_decorator(self):
        @self.m.component(memory="1MiB", ttl="30s")
        def embedder():
            return "E"

        self.assertEqual(embedder(), "E")  # the function itself is kept
        with self.m.acquire("embedder") as e:
            self.assertEqual(e, "E")
        self.assertEqual(self.m.registry()["embedder"]["ttl_ms"], 30000)

        @self.m.component("named", memory=1000)
        def whatever():
            return 5

        with self.m.acquire("named") as v:
            self.assertEqual(v, 5)

    def test_failed_load_carries_exception(self):
        def bad():
            raise FileNotFoundError("no such model: /models/x.bin")

        self.m.define("bad", bad, memory="1MiB")
        with self.assertRaises(larder.LoadError) as cm:
            self.m.acquire("bad")
        e = cm.exception
        self.assertEqual(e.code, -20007)
        self.assertEqual(e.component, "bad")
        self.assertEqual(e.exc_type, "FileNotFoundError")
        self.assertIsInstance(e.__cause__, FileNotFoundError)
        self.assertIn("/models/x.bin", str(e))
        r = self.m.registry()["bad"]
        self.assertEqual(r["state"], "failed")
        self.assertIn("FileNotFoundError: no such model", r["last_error"]["message"])
        # During the cooldown the same error comes back at once, without a load.
        with self.assertRaises(larder.CooldownError) as cm:
            self.m.acquire("bad")
        self.assertIsInstance(cm.exception, larder.LoadError)

    def test_fallback_heavy_to_light(self):
        def heavy():
            raise MemoryError("heavy does not fit")

        self.m.define("light", lambda: "L", memory="1MiB")
        self.m.define("heavy", heavy, memory="1MiB", fallback="light")
        with self.m.acquire("heavy") as lease_value:
            self.assertEqual(lease_value, "L")
        lease = self.m.acquire("heavy")
        self.assertEqual((lease.requested, lease.served_by), ("heavy", "light"))
        lease.release()
        with self.assertRaises(larder.LoadError):
            self.m.acquire("heavy", fallback=False)

    def test_bad_input(self):
        with self.assertRaises(larder.NotFoundError):
            self.m.acquire("nope")
        with self.assertRaises(KeyError):  # NotFoundError is a KeyError too
            self.m.acquire("nope")
        with self.assertRaises(ValueError):
            self.m.define("", lambda: 1)
        with self.assertRaises(TypeError):
            self.m.define("x", 42)
        with self.assertRaises(ValueError):
            self.m.define("x", lambda: 1, memory="lots")
        with self.assertRaises(ValueError):
            self.m.define("x", lambda: 1, ttl="soon")
        with self.assertRaises(ValueError):
            self.m.define("x", lambda: 1, instances=3)  # needs new_instance
        self.m.define("x", lambda: 1, memory=1)
        with self.assertRaises(ValueError):
            self.m.define("x", lambda: 1)
        with self.assertRaises(ValueError):
            self.m.acquire("x", timeout=-1)
        with self.assertRaises(TypeError):
            self.m.acquire_set("x")
        with self.assertRaises(larder.NotFoundError):
            self.m.acquire_set(["x", "nope"])
        with self.assertRaises(ValueError):
            larder.Manager(policy="fifo")
        with self.assertRaises(ValueError):
            larder.Manager(budget="much")
        self.assertEqual(larder.parse_size("2GiB"), 2 << 30)
        # Nothing leaked a lease.
        self.assertEqual(self.m.registry()["x"]["leases"], 0)

    def test_too_big(self):
        self.m.define("huge", lambda: 1, memory="1GiB")
        with self.assertRaises(larder.BudgetError) as cm:
            self.m.acquire("huge")
        self.assertIsInstance(cm.exception, MemoryError)

    def test_pool_of_instances(self):
        made, freed = [], []
        self.m.define("client", lambda: "model", memory="1MiB", instances=3,
                      new_instance=lambda model: made.append(1) or [model, len(made)],
                      free_instance=lambda model, inst: freed.append(inst[1]))
        leases = [self.m.acquire("client") for _ in range(3)]
        self.assertEqual(sorted(l.value[1] for l in leases), [1, 2, 3])
        with self.assertRaises(larder.TimeoutError):
            self.m.acquire("client", timeout=0.05)  # the pool does not grow past 3
        leases.pop().release()
        with self.m.acquire("client", timeout=5) as inst:
            self.assertEqual(inst[0], "model")
        for l in leases:
            l.release()
        self.assertEqual(len(made), 3)
        self.m.unload("client")
        self.assertEqual(sorted(freed), [1, 2, 3])

    def test_unload_waits_for_leases(self):
        unloaded = []
        self.m.define("a", lambda: "A", lambda model: unloaded.append(model), memory="1MiB")
        lease = self.m.acquire("a")
        with self.assertRaises(larder.TimeoutError):
            self.m.unload("a", timeout=0.1)
        self.assertEqual(unloaded, [])  # nothing leased is unloaded
        self.assertEqual(self.m.registry()["a"]["state"], "ready")
        lease.release()
        self.m.unload("a")
        self.assertEqual(unloaded, ["A"])
        self.assertEqual(self.m.registry()["a"]["state"], "unloaded")

    def test_undefine(self):
        unloaded = []
        self.m.define("a", lambda: "A", unloaded.append, memory="1MiB")
        lease = self.m.acquire("a")
        with self.assertRaises(larder.TimeoutError):
            self.m.undefine("a", timeout=0.05)  # leased: stays defined and loaded
        self.assertEqual(unloaded, [])
        lease.release()
        self.m.undefine("a")
        self.assertEqual(unloaded, ["A"])
        self.assertNotIn("a", self.m.registry())
        with self.assertRaises(larder.NotFoundError):
            self.m.acquire("a")
        self.m.define("a", lambda: "A2", memory="1MiB")  # the name is free again
        with self.m.acquire("a") as v:
            self.assertEqual(v, "A2")

    def test_ttl_zero_unloads_when_idle(self):
        unloaded = []
        self.m.define("stage", lambda: "S", unloaded.append, memory="1MiB", ttl=0)
        with self.m.acquire("stage"):
            pass
        wait_for(lambda: unloaded == ["S"], "the ttl-0 unload")

    def test_acquire_set_all_or_nothing(self):
        self.m.define("p", lambda: "P", memory="1MiB")
        self.m.define("q", lambda: "Q", memory="1MiB")

        def broken():
            raise RuntimeError("vision model is corrupt")

        self.m.define("r", broken, memory="1MiB")
        with self.m.acquire_set(["p", "q"]) as (p, q):
            self.assertEqual((p, q), ("P", "Q"))
            self.assertEqual(self.m.registry()["p"]["leases"], 1)
        with self.assertRaises(larder.LoadError) as cm:
            self.m.acquire_set(["p", "q", "r"])
        self.assertIn("vision model is corrupt", str(cm.exception))
        reg = self.m.registry()
        self.assertEqual([reg[n]["leases"] for n in "pqr"], [0, 0, 0])

    def test_set_larger_than_budget(self):
        self.m.define("big1", lambda: 1, memory="200MiB")
        self.m.define("big2", lambda: 2, memory="200MiB")
        with self.assertRaises(larder.BudgetError):
            self.m.acquire_set(["big1", "big2"])

    def test_preload_parallel_and_wait_ready(self):
        gates = [Gate("v%d" % i) for i in range(3)]
        for i, g in enumerate(gates):
            self.m.define("m%d" % i, g, memory="1MiB", preload=(i < 2))
        self.assertEqual(self.m.preload(), 2)
        self.assertEqual(self.m.preload(["m2"]), 1)
        for g in gates:  # all three loads run at once
            self.assertTrue(g.started.wait(60))
        self.assertFalse(self.m.wait_ready(timeout=0.05))
        for g in gates:
            g.opened.set()
        self.assertTrue(self.m.wait_ready(timeout=60))
        self.assertEqual({r["state"] for r in self.m.registry().values()}, {"ready"})
        with self.assertRaises(larder.NotFoundError):
            self.m.preload(["m0", "nope"])

    def test_registry_and_memory_fields(self):
        self.m.define("a", lambda: 1, memory="1MiB", pin=True, priority=3)
        with self.m.acquire("a"):
            pass
        r = self.m.registry()["a"]
        self.assertEqual(set(r), MODEL_KEYS)
        self.assertEqual(set(r["memory"]), MODEL_MEMORY_KEYS)
        self.assertEqual(set(r["instances"]), {"created", "busy", "max"})
        self.assertEqual(set(r["load_ms"]), {"last", "avg"})
        self.assertEqual((r["pin"], r["priority"], r["backend"]), (True, 3, "python"))
        self.assertEqual(r["memory"]["estimate_source"], "override")
        mem = self.m.memory()
        self.assertEqual(set(mem), MEMORY_KEYS)
        self.assertEqual(mem["budget_bytes"], 256 * MiB)
        self.assertEqual(mem["policy"], "cost")
        self.assertGreater(mem["process"]["rss_bytes"], 0)
        self.assertEqual([c["name"] for c in mem["components"]], ["a"])
        self.assertEqual(mem["reserved_bytes"], r["memory"]["reserved_bytes"])

    def test_measured_rss_of_python_model(self):
        if SANITIZER:
            self.skipTest(f"{SANITIZER} changes what RSS measures (shadow memory, quarantine)")
        # No estimate: the load runs alone and its RSS delta is its measured size.
        self.m.define("blob", lambda: b"\x07" * (64 * MiB))
        with self.m.acquire("blob") as b:
            self.assertEqual(len(b), 64 * MiB)
        del b
        r = self.m.registry()["blob"]["memory"]
        self.assertEqual(r["measure_method"], "rss")
        self.assertGreaterEqual(r["measured_bytes"], 60 * MiB)
        self.m.unload("blob")
        r = self.m.registry()["blob"]["memory"]
        # A large bytes object is its own mapping: freeing it gives the pages back.
        self.assertGreaterEqual(r["last_returned_bytes"], 48 * MiB)

    def test_events_iterator_and_callback(self):
        seen = []
        m = larder.Manager(budget="64MiB", on_event=seen.append)
        try:
            it = m.events(timeout=30)
            m.define("a", lambda: 1, memory="1MiB")
            with m.acquire("a"):
                pass
            m.unload("a")
            types = []
            for ev in it:
                types.append(ev["type"])
                if ev["type"] == "unload":
                    self.assertEqual(ev["name"], "a")
                    self.assertEqual(ev["reason"], "request")
                    self.assertIn("bytes_returned", ev)
                if len(types) == 4:
                    break
            # Each pair comes from one thread in order; the loader's load_done and this
            # thread's evict may come either way round.
            self.assertEqual(sorted(types), ["evict", "load_done", "load_start", "unload"])
            self.assertLess(types.index("load_start"), types.index("load_done"))
            self.assertLess(types.index("evict"), types.index("unload"))
            wait_for(lambda: len(seen) >= 4, "the on_event calls")
            self.assertEqual(sorted(e["type"] for e in seen[:4]), sorted(types))
            self.assertEqual(next(m.events(past=True))["type"], "load_start")
            with self.assertRaises(StopIteration):
                next(m.events(timeout=0.01))
        finally:
            m.close()

    def test_callback_exceptions_do_not_break_the_manager(self):
        hooked = []
        old = sys.unraisablehook
        sys.unraisablehook = lambda u: hooked.append(u.exc_type)
        try:
            def noisy(ev):
                raise ValueError("observer bug")

            m = larder.Manager(budget="64MiB", on_event=noisy)

            def bad_unload(model):
                raise OSError("close failed")

            m.define("a", lambda: 1, bad_unload, memory="1MiB")
            with m.acquire("a") as v:
                self.assertEqual(v, 1)
            m.unload("a")
            self.assertEqual(m.registry()["a"]["state"], "unloaded")
            m.close()
            self.assertIn(OSError, hooked)
            self.assertIn(ValueError, hooked)
        finally:
            sys.unraisablehook = old

    def test_trim(self):
        self.m.define("a", lambda: 1, memory="2MiB")
        self.m.define("b", lambda: 2, memory="2MiB", pin=True)
        for n in "ab":
            with self.m.acquire(n):
                pass
        t = self.m.trim()
        self.assertEqual(t["components"], 1)
        self.assertEqual(t["reserved_freed"], 2 * MiB)
        self.assertEqual(self.m.registry()["b"]["state"], "ready")

    def test_budget_property(self):
        self.m.budget = "128MiB"
        self.assertEqual(self.m.budget, 128 * MiB)


class Async(unittest.TestCase):
    def test_wait_does_not_block_the_loop(self):
        m = larder.Manager(budget="64MiB")
        gate = Gate("slow")
        m.define("slow", gate, memory="1MiB")

        async def main():
            ticks = 0
            stop = asyncio.Event()

            async def ticker():
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0.001)

            t = asyncio.create_task(ticker())

            async def user():
                async with m.acquire_async("slow") as v:
                    return v

            u = asyncio.create_task(user())
            while not gate.started.is_set():
                await asyncio.sleep(0.001)
            before = ticks
            while ticks < before + 20:  # the loop runs while the load waits
                await asyncio.sleep(0.001)
            gate.opened.set()
            v = await u
            stop.set()
            await t
            return v

        self.assertEqual(asyncio.run(main()), "slow")
        self.assertEqual(m.registry()["slow"]["leases"], 0)
        m.close()

    def test_errors_and_cancel(self):
        m = larder.Manager(budget="64MiB")
        gate = Gate("g")
        m.define("g", gate, memory="1MiB")

        async def main():
            with self.assertRaises(larder.NotFoundError):
                async with m.acquire_async("nope"):
                    pass
            task = asyncio.create_task(self._use(m, "g"))
            while not gate.started.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            with self.assertRaises(asyncio.CancelledError):
                await task
            gate.opened.set()

        asyncio.run(main())
        # The canceled acquire's lease came back when the load finished.
        wait_for(lambda: m.registry()["g"]["state"] == "ready"
                 and m.registry()["g"]["leases"] == 0, "the canceled lease to return")
        m.close()

    async def _use(self, m, name):
        async with m.acquire_async(name) as v:
            return v


class Lifecycle(unittest.TestCase):
    def test_keyboard_interrupt_during_wait(self):
        m = larder.Manager(budget="64MiB")
        gate = Gate("v")
        m.define("slow", gate, memory="1MiB")
        threading.Thread(target=lambda: (gate.started.wait(60), _thread.interrupt_main()),
                         daemon=True).start()
        with self.assertRaises(KeyboardInterrupt):
            m.acquire("slow", timeout=None)
        gate.opened.set()
        # The abandoned acquire's lease is released when its answer comes.
        wait_for(lambda: m.registry()["slow"]["state"] == "ready"
                 and m.registry()["slow"]["leases"] == 0, "the abandoned lease to return")
        m.close()

    def test_keyboard_interrupt_during_set(self):
        m = larder.Manager(budget="64MiB")
        gate = Gate("v")
        m.define("fast", lambda: "F", memory="1MiB")
        m.define("slow", gate, memory="1MiB")
        threading.Thread(target=lambda: (gate.started.wait(60), _thread.interrupt_main()),
                         daemon=True).start()
        with self.assertRaises(KeyboardInterrupt):
            m.acquire_set(["fast", "slow"], timeout=None)
        gate.opened.set()
        # The set finishes on its helper thread and gives both leases back.
        wait_for(lambda: m.registry()["slow"]["state"] == "ready"
                 and sum(r["leases"] for r in m.registry().values()) == 0,
                 "the abandoned set's leases to return")
        m.close()

    def test_close_with_lease_out_and_waiter(self):
        unloaded = []
        m = larder.Manager(budget="64MiB")
        m.define("a", lambda: "A", unloaded.append, memory="1MiB")
        gate = Gate("B")
        m.define("b", gate, memory="1MiB")
        lease = m.acquire("a")
        errors = []

        def waiter():
            try:
                m.acquire("b", timeout=None)
            except larder.Error as e:
                errors.append(type(e))

        t = threading.Thread(target=waiter)
        t.start()
        self.assertTrue(gate.started.wait(60))
        threading.Timer(0.05, gate.opened.set).start()
        m.close()
        t.join(60)
        self.assertFalse(t.is_alive())
        self.assertEqual(unloaded, [])  # leased: still loaded
        self.assertEqual(lease.value, "A")
        lease.release()  # the last release after close unloads it
        self.assertEqual(unloaded, ["A"])
        with self.assertRaises(larder.ClosedError):
            m.acquire("a")
        m.close()  # idempotent

    def test_manager_dropped_with_lease_alive(self):
        unloaded = []
        m = larder.Manager(budget="64MiB")
        m.define("a", lambda: "A", unloaded.append, memory="1MiB")
        lease = m.acquire("a")
        del m
        gc.collect()
        self.assertEqual(unloaded, [])
        self.assertEqual(lease.value, "A")
        del lease  # the lease held the manager: both go now
        gc.collect()
        self.assertEqual(unloaded, ["A"])

    def test_interpreter_exit_with_leases_and_loads(self):
        # A script that exits with a lease out, a load in flight on a daemon thread and an
        # unclosed manager: atexit closes it, unloads run, nothing hangs or crashes.
        script = r"""
import threading, time, larder
m = larder.Manager(budget="64MiB", close_timeout=30)
def slow():
    time.sleep(0.2)
    return "S"
m.define("a", lambda: "A", lambda v: print("unload", v, flush=True), memory="1MiB")
m.define("s", slow, lambda v: print("unload", v, flush=True), memory="1MiB")
keep = m.acquire("a")
threading.Thread(target=lambda: m.acquire("s").release(), daemon=True).start()
time.sleep(0.01)
print("exit", flush=True)
"""
        env = dict(os.environ)
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("exit", r.stdout)
        self.assertIn("unload S", r.stdout)
        self.assertNotIn("Fatal", r.stderr)


if __name__ == "__main__":
    unittest.main()
