#!/usr/bin/python3
"""Warm request latency through larderd's reverse proxy vs straight to the child server.

Starts the built larderd with examples/external/server.py as an external model, warms it,
then times the same POST /predict alternately through larderd (/v1/models/py/infer, one
keep-alive connection) and straight to the child's port (a connection per request, as
larderd itself connects to it), in the same run. Prints the
median and p90 of each and their ratio (target: proxy / direct <= 1.2).
Usage: bench/isolation/proxy.py BUILD_DIR [REQUESTS]
"""
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

build = sys.argv[1] if len(sys.argv) > 1 else "build"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
server = os.path.join(root, "examples", "external", "server.py")
body = json.dumps({"rows": [[1, 0, 0, 0], [-1, 0, 1, 0]]})

with tempfile.TemporaryDirectory() as tmp:
    conf = os.path.join(tmp, "larder.ini")
    with open(conf, "w") as f:
        f.write("[server]\nlisten = 127.0.0.1:0\nlog_level = warn\n\n"
                "[memory]\nwatch_pressure = no\n\n"
                "[model.py]\ncommand = /usr/bin/python3 %s --port ${PORT}\n"
                "infer_path = /predict\nttl = never\n" % server)
    log = open(os.path.join(tmp, "log"), "w+")
    d = subprocess.Popen([os.path.join(build, "src", "daemon", "larderd"), "--config", conf,
                          "--log-format", "json", "--log-level", "info"],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        port = None
        for _ in range(600):
            log.seek(0)
            for line in log:
                if '"listening"' in line or "listening" in line:
                    try:
                        port = json.loads(line).get("port")
                    except ValueError:
                        pass
            if port:
                break
            time.sleep(0.05)
        if not port:
            sys.exit("larderd did not start")
        via = http.client.HTTPConnection("127.0.0.1", port)
        via.request("GET", "/v1/models/py/proxy/pid")
        child_port = json.loads(via.getresponse().read())["port"]
        hdr = {"Content-Type": "application/json"}

        def once(conn, path):
            t = time.perf_counter()
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", child_port)
            conn.request("POST", path, body, hdr)
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status
            if conn is not via:
                conn.close()
            return time.perf_counter() - t

        for _ in range(50):
            once(via, "/v1/models/py/infer")
            once(None, "/predict")
        a, b = [], []
        for _ in range(n):
            a.append(once(via, "/v1/models/py/infer"))
            b.append(once(None, "/predict"))

        def q(v, p):
            return sorted(v)[int(p * (len(v) - 1))] * 1e6

        ma, mb = statistics.median(a) * 1e6, statistics.median(b) * 1e6
        print("requests: %d each, alternating; larderd on one keep-alive connection, the child "
              "on a new connection per request, as larderd reaches it (Python's http.server "
              "on a kept-alive connection stalls 40 ms per request on delayed ACKs)" % n)
        print("through larderd: median %.0f us, p90 %.0f us" % (ma, q(a, 0.9)))
        print("straight to the child: median %.0f us, p90 %.0f us" % (mb, q(b, 0.9)))
        print("ratio (median, proxy / direct): %.3f  (target <= 1.2)" % (ma / mb))
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(60)
