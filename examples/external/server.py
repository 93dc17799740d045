#!/usr/bin/python3
"""A model server for larder's external isolation: an XGBoost classifier over HTTP.

At start it trains a small booster on a synthetic dataset drawn from a fixed seed (so
every start serves the same model), then serves:
  GET  /health              200 once the model is ready
  POST /predict             {"rows": [[f0, f1, f2, f3], ...]} -> {"predictions": [...]}
  GET  /stream?id=ID&n=N    server-sent events: one prediction event, then the next N-1
                            once POST /release?id=ID has been called (so a client can
                            see the first event arrive before the others exist)
  POST /release?id=ID       lets the stream ID go on
  GET  /pid                 {"pid": ...} of this process
  POST /grow?mib=N          holds N MiB more (written, so resident): a model whose memory
                            grows while it runs, as caches and batch buffers do
Only Debian's python3-xgboost and python3-numpy are used.
"""
import argparse
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import xgboost as xgb

FEATURES = 4


def train(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, FEATURES))
    y = (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(x, label=y), num_boost_round=20)
    return booster


class State:
    booster = None
    lock = threading.Lock()
    gates = {}
    held = []

    @classmethod
    def gate(cls, key):
        with cls.lock:
            return cls.gates.setdefault(key, threading.Event())


def predict(rows):
    with State.lock:
        return [float(v) for v in State.booster.predict(xgb.DMatrix(np.asarray(rows, dtype=float)))]


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1: connections stay open between requests (larderd keeps a few per model).
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Replies go out at once: without it a reply written in two parts waits for the
        # client's delayed ACK on a kept-alive connection.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    access_log = False

    def log_message(self, fmt, *args):
        sys.stderr.write((fmt % args) + "\n")

    def log_request(self, code="-", size="-"):
        if self.access_log:
            super().log_request(code, size)

    def reply(self, status, obj):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        # The head and the body in one write.
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        if url.path == "/health":
            self.reply(200 if State.booster else 503, {"ok": State.booster is not None})
        elif url.path == "/pid":
            self.reply(200, {"pid": os.getpid(), "port": self.server.server_address[1]})
        elif url.path == "/stream":
            key = q.get("id", ["default"])[0]
            n = int(q.get("n", ["3"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            rng = np.random.default_rng(len(key))
            for i in range(n):
                if i == 1 and not State.gate(key).wait(120):
                    break
                p = predict(rng.normal(size=(1, FEATURES)))[0]
                self.chunk(("event: prediction\ndata: %s\n\n"
                            % json.dumps({"i": i, "p": p})).encode())
            self.chunk(b"event: done\ndata: {}\n\n")
            self.chunk(b"")
        else:
            self.reply(404, {"error": "no route " + url.path})

    def do_POST(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/predict":
            try:
                rows = json.loads(body)["rows"]
                out = predict(rows)
            except (ValueError, KeyError, TypeError) as e:
                self.reply(400, {"error": "bad input: %s" % e})
                return
            self.reply(200, {"predictions": out, "pid": os.getpid()})
        elif url.path == "/grow":
            mib = int(q.get("mib", ["0"])[0])
            block = bytearray(mib << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            with State.lock:
                State.held.append(block)
                total = sum(len(b) for b in State.held)
            self.reply(200, {"held_bytes": total})
        elif url.path == "/release":
            State.gate(q.get("id", ["default"])[0]).set()
            self.reply(200, {"released": True})
        else:
            self.reply(404, {"error": "no route " + url.path})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--access-log", action="store_true",
                    help="a line on stderr (larderd's log) for every request")
    a = ap.parse_args()
    Handler.access_log = a.access_log
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    State.booster = train(a.seed)
    print("serving an xgboost classifier on 127.0.0.1:%d" % a.port, file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
