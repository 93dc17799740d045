"""examples/python/fastapi_service.py under uvicorn on a loopback port, driven with real HTTP
requests: models load lazily and once behind their routes, the performance routes report
m.memory() and m.registry(), the cleanup route wants its token, errors are JSON."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import httpx

ROOT = os.environ.get("LARDER_SOURCE_ROOT",
                      os.path.join(os.path.dirname(__file__), "..", ".."))
SERVICE = os.path.join(ROOT, "examples", "python", "fastapi_service.py")
TOKEN = "test-admin-token-5f1c"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        tokens = os.path.join(cls.tmp.name, "tokens")
        with open(tokens, "w") as f:
            f.write(f"# admin tokens\n{TOKEN}\n")
        for _ in range(3):  # another process may take the port between probe and bind
            cls.port = free_port()
            cls.log = open(os.path.join(cls.tmp.name, "service.log"), "w+")
            cls.proc = subprocess.Popen(
                [sys.executable, SERVICE, "--port", str(cls.port), "--token-file", tokens],
                stdout=cls.log, stderr=subprocess.STDOUT)
            cls.base = f"http://127.0.0.1:{cls.port}"
            if cls._wait_up():
                return
            cls.proc.wait(30)
        raise AssertionError("the service did not start:\n" + cls._log_text())

    @classmethod
    def _wait_up(cls):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cls.proc.poll() is not None:
                return False
            try:
                if httpx.get(cls.base + "/performance/models", timeout=5).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        return False

    @classmethod
    def _log_text(cls):
        cls.log.seek(0)
        return cls.log.read()

    @classmethod
    def tearDownClass(cls):
        if cls.proc.poll() is None:
            cls.proc.kill()
            cls.proc.wait(30)
        cls.log.close()
        cls.tmp.cleanup()

    def models(self):
        r = httpx.get(self.base + "/performance/models", timeout=30)
        self.assertEqual(r.status_code, 200)
        return {m["name"]: m for m in r.json()["models"]}

    def assert_error(self, r, status, code):
        self.assertEqual(r.status_code, status, r.text)
        body = r.json()
        self.assertEqual(body["error"]["code"], code)
        self.assertTrue(body["error"]["message"])

    def test_service(self):
        reg = self.models()
        self.assertEqual({n: m["state"] for n, m in reg.items()},
                         {"churn": "unloaded", "sentiment": "unloaded"})  # lazy

        # 12 concurrent first requests: one load.
        results = []

        def ask(i):
            text = "great product, love it" if i % 2 else "terrible, broke, awful"
            r = httpx.post(self.base + "/v1/sentiment", json={"text": text}, timeout=60)
            results.append((i, r.status_code, r.json()))

        ts = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.assertEqual(sorted(s for _, s, _ in results), [200] * 12)
        for i, _, body in results:
            self.assertEqual(body["label"], "positive" if i % 2 else "negative", body)
        reg = self.models()
        self.assertEqual(reg["sentiment"]["loads"], 1)
        self.assertEqual(reg["sentiment"]["state"], "ready")
        self.assertEqual(reg["churn"]["state"], "unloaded")

        r = httpx.post(self.base + "/v1/churn", json={"rows": [[2, -2, 0, 0, 0, 0],
                                                                [-2, 2, 0, 0, 0, 0]]}, timeout=60)
        self.assertEqual(r.status_code, 200, r.text)
        p = r.json()["churn"]
        self.assertGreater(p[0], 0.5)
        self.assertLess(p[1], 0.5)

        # Bad input: JSON errors, nothing leaked.
        self.assert_error(httpx.post(self.base + "/v1/churn", json={"rows": [[1, 2]]}),
                          400, "bad_request")
        self.assert_error(httpx.post(self.base + "/v1/sentiment", json={}), 400, "bad_request")
        self.assert_error(httpx.post(self.base + "/v1/sentiment", content=b"{not json",
                                     headers={"content-type": "application/json"}),
                          400, "bad_request")
        reg = self.models()
        self.assertEqual(reg["sentiment"]["leases"] + reg["churn"]["leases"], 0)

        mem = httpx.get(self.base + "/performance/memory", timeout=30).json()
        self.assertEqual(mem["budget_bytes"], 1 << 30)
        self.assertGreater(mem["process"]["rss_bytes"], 0)
        self.assertEqual({c["name"] for c in mem["components"]}, {"churn", "sentiment"})
        self.assertEqual(mem["reserved_bytes"],
                         sum(m["memory"]["reserved_bytes"] for m in reg.values()))

        # Cleanup: token-protected.
        url = self.base + "/admin/cleanup"
        self.assert_error(httpx.post(url), 401, "unauthorized")
        self.assert_error(httpx.post(url, headers={"Authorization": "Bearer wrong"}),
                          401, "unauthorized")
        self.assert_error(httpx.post(url, headers={"Authorization": TOKEN}), 401, "unauthorized")
        self.assertEqual(self.models()["sentiment"]["state"], "ready")
        r = httpx.post(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual(r.json()["trimmed"]["components"], 2)
        reg = self.models()
        self.assertEqual({m["state"] for m in reg.values()}, {"unloaded"})

        # The next request loads it again.
        r = httpx.post(self.base + "/v1/sentiment", json={"text": "excellent"}, timeout=60)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(self.models()["sentiment"]["loads"], 2)

        # SIGTERM: uvicorn stops, the lifespan closes the manager, the process exits.
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(60), 0, self._log_text())


if __name__ == "__main__":
    unittest.main()
