#!/usr/bin/env python3
"""Soak test of larderd: mixed valid, invalid and hostile traffic, reloads and cleanups.

Starts the built larderd with a generated config (synthetic models with load and infer
times, plus the real engines of examples/larder.ini unless --no-real), optionally inside
a cgroup with a memory limit, and drives it for --seconds (at most 600) with:
  - valid requests: synthetic infers (shared, pooled, big, ttl 0, failing with a
    fallback), XGBoost rows, Tesseract PNG, PocketSphinx WAV, listings, metrics, memory;
  - invalid ones: wrong content types, bad bodies, unknown models, bad query values,
    wrong methods;
  - hostile ones over raw sockets: huge headers, garbage paths with %00, very long URLs,
    non-HTTP bytes, slow and stalled clients, lying and huge Content-Lengths, bad chunked
    bodies, pipelining;
  - concurrent cold starts (an admin unload, then a burst of requests for the model);
  - periodic reloads (the config rewritten, sometimes with an error, then POST
    /v1/reload with the admin token) and POST /v1/memory/cleanup;
  - server-sent event clients that connect and go away.
Prints the requests served, results by class (2xx, 4xx, 5xx, connection errors), the
5xx codes, the /health latency, RSS at start, peak and end, and how larderd ended. Exits
1 if larderd died, stopped answering /health, reserved more than its budget (checked
every 5 s), or did not stop cleanly on SIGTERM.
Python standard library only.
"""

import argparse
import collections
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
TOKEN = "example-admin-token"
MAX_SECONDS = 600


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- config -------------------------------------------------------------------------------

SYNTHETIC = {
    # name: (backend, options)
    "s-fast": ("synthetic", {"infer_ms": "2", "size": "8MiB"}),
    "s-slow": ("synthetic", {"infer_ms": "40", "load_ms": "300", "size": "32MiB"}),
    "s-pooled": ("synthetic-pooled", {"pooled": "yes", "infer_ms": "10", "load_ms": "100",
                                      "instance_ms": "20", "instances": "3",
                                      "size": "16MiB"}),
    "s-big": ("synthetic", {"size": "160MiB", "load_ms": "150", "infer_ms": "5"}),
    "s-ttl0": ("synthetic", {"ttl": "0", "load_ms": "50", "size": "24MiB"}),
    "s-flaky": ("synthetic", {"fail": "first-3", "label": "flaky", "load_ms": "20",
                              "fallback": "s-fast"}),
    "s-huge": ("synthetic", {"memory": "64GiB", "size": "1MiB", "fallback": "s-fast"}),
}
REAL = ["ocr-eng", "asr-en", "tabular"]


def write_config(path, generation, budget, real, broken=False):
    """Writes the config of one generation; generation changes what a reload changes."""
    lines = [
        "; written by bench/soak/soak.py, generation %d" % generation,
        "[server]",
        "admin_tokens = admin.tokens",
        "max_body = 8MiB",
        "request_timeout = 20s",
        "drain_timeout = 10s",
        "threads = 8",
        "events_queue = 64KiB",
        "log_level = warn",
        "state_dir = state",
        "[memory]",
        "budget = %s" % budget,
        "ttl = 20s",
        "history = 5m",
    ]
    models = dict(SYNTHETIC)
    if generation % 2:
        # one model comes and goes, one changes
        models["s-reloaded"] = ("synthetic", {"infer_ms": "1", "load_ms": "30"})
    slow = dict(models["s-slow"][1])
    slow["infer_ms"] = str(20 + 20 * (generation % 3))
    models["s-slow"] = ("synthetic", slow)
    for name, (backend, opts) in sorted(models.items()):
        lines += ["[model.%s]" % name, "backend = %s" % backend]
        lines += ["%s = %s" % kv for kv in opts.items()]
    if real:
        lines += [
            "[model.ocr-eng]", "backend = tesseract", "language = eng", "instances = 2",
            "[model.asr-en]", "backend = pocketsphinx", "ttl = 1m",
            "[model.tabular]", "backend = xgboost",
            "path = %s" % os.path.join(EXAMPLES, "tabular.ubj"),
        ]
    if broken:
        lines += ["[model.broken", "this is not a key value line"]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


# ---- cgroup -------------------------------------------------------------------------------

class Cgroup:
    """A child memory cgroup (v2 memory.max, else v1 memory.limit_in_bytes)."""

    def __init__(self, limit):
        self.path = None
        self.note = ""
        self.kind = None
        name = "larder-soak-%d" % os.getpid()
        try:
            if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                with open("/sys/fs/cgroup/cgroup.controllers") as f:
                    if "memory" not in f.read().split():
                        raise OSError("cgroup v2 without the memory controller")
                self.kind, root, controller, limit_file = "v2", "", "", "memory.max"
            elif os.path.isdir("/sys/fs/cgroup/memory"):
                self.kind, root, controller, limit_file = ("v1", "/memory", "memory",
                                                           "memory.limit_in_bytes")
            else:
                raise OSError("no cgroup memory controller mounted")
            self.path = os.path.join("/sys/fs/cgroup" + root + self._own_path(controller), name)
            os.mkdir(self.path)
            self._write(limit_file, str(limit))
        except OSError as e:
            self.note = "no cgroup memory limit (%s)" % e
            self.remove()
            self.path = None

    @staticmethod
    def _own_path(controller):
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if (controller == "" and ctrls == "") or controller in ctrls.split(","):
                    return path.rstrip("/")
        return ""

    def _write(self, file, value):
        with open(os.path.join(self.path, file), "w") as f:
            f.write(value)

    def add(self, pid):
        if not self.path:
            return False
        try:
            self._write("cgroup.procs", str(pid))
            return True
        except OSError as e:
            self.note = "cgroup %s made, but larderd could not move in (%s)" % (self.path, e)
            return False

    def read(self, file):
        try:
            with open(os.path.join(self.path, file)) as f:
                return f.read().strip()
        except (OSError, TypeError):
            return None

    def remove(self):
        if self.path:
            for _ in range(20):
                try:
                    os.rmdir(self.path)
                    return
                except FileNotFoundError:
                    return
                except OSError:
                    time.sleep(0.1)


# ---- the daemon ---------------------------------------------------------------------------

def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Daemon:
    def __init__(self, build, workdir, port):
        self.port = port
        self.config = os.path.join(workdir, "larder.ini")
        self.log_path = os.path.join(workdir, "larderd.log")
        env = dict(os.environ)
        env["LARDER_BACKEND_DIR"] = os.path.join(build, "backends")
        env["OMP_THREAD_LIMIT"] = "1"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [os.path.join(build, "src", "daemon", "larderd"), "--config", self.config,
             "--listen", "127.0.0.1:%d" % port],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=workdir)

    def alive(self):
        return self.proc.poll() is None

    def describe_exit(self):
        rc = self.proc.returncode
        if rc is None:
            return "running"
        if rc < 0:
            return "killed by signal %s" % signal.Signals(-rc).name
        return "exited with status %d" % rc

    def log_tail(self, n=25):
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return ""


# ---- traffic ------------------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_class = collections.Counter()
        self.by_kind = collections.defaultdict(collections.Counter)
        self.codes_5xx = collections.Counter()
        self.codes_4xx = collections.Counter()
        self.unexpected = collections.Counter()
        self.health_max = 0.0
        self.health_fail = 0

    def count(self, kind, outcome, code=None):
        with self.lock:
            self.by_class[outcome] += 1
            self.by_kind[kind][outcome] += 1
            if outcome == "5xx" and code:
                self.codes_5xx[code] += 1
            if outcome == "4xx" and code:
                self.codes_4xx["%s %s" % (kind, code)] += 1

    def odd(self, what):
        with self.lock:
            self.unexpected[what] += 1


def outcome_of(status):
    return "%dxx" % (status // 100) if 100 <= status < 600 else "other"


class Client:
    def __init__(self, port, stats, deadline):
        self.port = port
        self.stats = stats
        self.deadline = deadline

    def request(self, kind, method, path, body=None, headers=None, timeout=30, admin=False,
                expect=None):
        """One request on a fresh connection; returns (status, parsed JSON or None)."""
        h = dict(headers or {})
        if admin:
            h["Authorization"] = "Bearer " + TOKEN
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            data = r.read()
        except (OSError, http.client.HTTPException):
            self.stats.count(kind, "conn_error")
            return None, None
        finally:
            conn.close()
        doc = None
        try:
            doc = json.loads(data) if data[:1] in (b"{", b"[") else None
        except ValueError:
            pass
        code = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            code = doc["error"].get("code")
        self.stats.count(kind, outcome_of(r.status), code)
        if expect and outcome_of(r.status) not in expect:
            self.stats.odd("%s %s -> %d %s" % (method, re.sub(r"\?.*", "?...", path)[:60],
                                               r.status, code or ""))
        return r.status, doc

    def raw(self, kind, data, slow=0.0, hold=0.0, read=True, timeout=15):
        """Bytes over a raw socket, maybe slowly; counts the reply's class or 'closed'."""
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        except OSError:
            self.stats.count(kind, "conn_error")
            return
        reply = b""
        try:
            if slow:
                for i in range(0, len(data), 7):
                    s.sendall(data[i:i + 7])
                    time.sleep(slow)
            else:
                s.sendall(data)
            if hold:
                time.sleep(hold)
            if read:
                while len(reply) < 65536:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                    # the replies to as many requests as were sent whole (pipelining)
                    if (b"\r\n\r\n" in reply and
                            reply.count(b"HTTP/1.") >= max(1, data.count(b"HTTP/1.1\r\n"))):
                        break
        except OSError:
            pass
        finally:
            s.close()
        m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
        if m:
            self.stats.count(kind, outcome_of(int(m.group(1))))
        else:
            self.stats.count(kind, "closed")


def file_bytes(name):
    with open(os.path.join(EXAMPLES, name), "rb") as f:
        return f.read()


class Traffic:
    def __init__(self, client, real, rng):
        self.c = client
        self.real = real
        self.rng = rng
        self.png = file_bytes("ocr.png")
        self.wav = file_bytes("speech.wav")
        self.rows = file_bytes("rows.json")
        self.models = sorted(SYNTHETIC)

    def pick(self, seq):
        return seq[self.rng.randrange(len(seq))]

    # valid ------------------------------------------------------------------------------
    def synthetic_infer(self):
        m = self.pick(["s-fast", "s-fast", "s-slow", "s-pooled", "s-big", "s-ttl0",
                       "s-flaky", "s-huge"])
        body = os.urandom(self.rng.randrange(1, 4096))  # an empty body is a 400
        self.c.request("valid", "POST", "/v1/models/%s/infer" % m, body,
                       {"Content-Type": "application/octet-stream"},
                       expect=("2xx", "5xx"))

    def real_infer(self):
        if not self.real:
            return self.synthetic_infer()
        r = self.rng.random()
        if r < 0.6:
            self.c.request("valid", "POST", "/v1/models/tabular/infer", self.rows,
                           {"Content-Type": "application/json"}, expect=("2xx", "5xx"))
        elif r < 0.9:
            self.c.request("valid", "POST", "/v1/models/ocr-eng/infer", self.png,
                           {"Content-Type": "image/png"}, expect=("2xx", "5xx"))
        else:
            self.c.request("valid", "POST", "/v1/models/asr-en/infer", self.wav,
                           {"Content-Type": "audio/wav"}, timeout=60, expect=("2xx", "5xx"))

    def reads(self):
        path = self.pick(["/health", "/ready", "/v1/models", "/v1/models/s-fast",
                          "/v1/memory", "/v1/memory?history=100", "/metrics"])
        self.c.request("read", self.pick(["GET", "HEAD"]), path, expect=("2xx", "5xx"))

    # invalid ----------------------------------------------------------------------------
    def invalid(self):
        rnd = os.urandom(self.rng.randrange(1, 2048))
        cases = [
            ("POST", "/v1/models/ocr-eng/infer", rnd, {"Content-Type": "image/png"}),
            ("POST", "/v1/models/ocr-eng/infer", self.png[:len(self.png) // 2],
             {"Content-Type": "image/png"}),
            ("POST", "/v1/models/ocr-eng/infer", self.png, {"Content-Type": "text/plain"}),
            ("POST", "/v1/models/asr-en/infer", rnd, {"Content-Type": "audio/wav"}),
            ("POST", "/v1/models/asr-en/infer", self.wav[:44], {"Content-Type": "audio/wav"}),
            ("POST", "/v1/models/asr-en/infer", self.wav, {"Content-Type": "video/mp4"}),
            ("POST", "/v1/models/tabular/infer", b'{"rows": [[1, 2]]}',
             {"Content-Type": "application/json"}),
            ("POST", "/v1/models/tabular/infer", b'{"rows": [[1, 2, 3, "x"]]',
             {"Content-Type": "application/json"}),
            ("POST", "/v1/models/tabular/infer", rnd, {"Content-Type": "application/xml"}),
            ("POST", "/v1/models/nope/infer", b"x", {}),
            ("POST", "/v1/models/s-fast/infer?error=input", b"x", {}),
            ("POST", "/v1/models/s-fast/infer?error=media", b"x", {}),
            ("GET", "/v1/models/s-fast/infer", None, {}),
            ("POST", "/v1/models", b"", {}),
            ("POST", "/v1/models/s-fast/load?timeout=soon", b"", {"Authorization": "Bearer x"}),
            ("POST", "/v1/models/s-fast/unload", b"", {"Authorization": "Bearer wrong"}),
            ("POST", "/v1/reload", b"", {}),
            ("GET", "/v1/memory?history=-1", None, {}),
            ("GET", "/v1/memory?history=99999999999999999999999", None, {}),
            ("DELETE", "/v1/models/s-fast", None, {}),
        ]
        method, path, body, headers = self.pick(cases)
        self.c.request("invalid", method, path, body, headers, expect=("4xx",))

    def admin_bad_timeout(self):
        self.c.request("invalid", "POST", "/v1/models/s-fast/load?timeout=12parsecs", b"",
                       admin=True, expect=("4xx",))

    # hostile ----------------------------------------------------------------------------
    def hostile(self):
        n = self.rng.randrange(11)
        if n == 0:  # huge header
            junk = b"X-Junk: " + b"a" * self.rng.choice([8192, 65536, 300000]) + b"\r\n"
            self.c.raw("hostile", b"GET /health HTTP/1.1\r\nHost: x\r\n" + junk + b"\r\n")
        elif n == 1:  # many headers
            hdrs = b"".join(b"X-H%d: v\r\n" % i for i in range(3000))
            self.c.raw("hostile", b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + hdrs + b"\r\n")
        elif n == 2:  # garbage paths
            path = self.pick([b"/v1/models/%00/infer", b"/v1/models/a%00b", b"/%00",
                              b"/v1/models/../../etc/passwd", b"/v1/models/%2F%2F/infer",
                              b"/v1/models/" + b"n" * 20000, b"/\xff\xfe\x00x",
                              b"/v1/models/s-fast/infer?sleep_ms=%00&error=%ff",
                              b"*", b"http://evil/v1/models", b"/v1//models//"])
            self.c.raw("hostile", b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 1\r\n\r\nx")
        elif n == 3:  # not HTTP at all
            self.c.raw("hostile", os.urandom(self.rng.randrange(1, 5000)))
        elif n == 4:  # slow client: headers a few bytes at a time
            self.c.raw("hostile", b"GET /v1/models/s-fast HTTP/1.1\r\nHost: x\r\n"
                       b"User-Agent: slow\r\n\r\n", slow=0.15)
        elif n == 5:  # stalled: half a request, then silence, then gone
            self.c.raw("hostile", b"POST /v1/models/s-fast/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 100\r\n\r\nabc", hold=self.rng.uniform(1, 6),
                       read=False)
        elif n == 6:  # a body longer than max_body, announced
            self.c.raw("hostile", b"POST /v1/models/s-fast/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 10737418240\r\n\r\n" + b"z" * 1000)
        elif n == 7:  # a body longer than max_body, chunked
            chunk = b"100000\r\n" + b"q" * 0x100000 + b"\r\n"
            self.c.raw("hostile", b"POST /v1/models/s-fast/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 10 + b"0\r\n\r\n")
        elif n == 8:  # bad chunked framing
            self.c.raw("hostile", b"POST /v1/models/tabular/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n-5\r\n\r\n")
        elif n == 9:  # pipelined requests, the last one cut
            one = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
            self.c.raw("hostile", one * 5 + b"GET /v1/mod", read=True, timeout=5)
        else:  # lying Content-Length, then close
            self.c.raw("hostile", b"POST /v1/models/s-pooled/infer HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 5000\r\n\r\n" + b"y" * 10, read=False)

    # bursts -----------------------------------------------------------------------------
    def cold_start_storm(self):
        m = self.pick(["s-slow", "s-pooled", "s-big", "s-reloaded"])
        self.c.request("admin", "POST", "/v1/models/%s/unload?timeout=5s" % m, b"",
                       admin=True, expect=("2xx", "4xx", "5xx"))
        threads = [threading.Thread(target=self.c.request,
                                    args=("cold", "POST", "/v1/models/%s/infer" % m, b"cold",
                                          {"Content-Type": "application/octet-stream"}),
                                    kwargs={"expect": ("2xx", "4xx", "5xx")})
                   for _ in range(self.rng.randrange(4, 12))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def events(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.c.port), timeout=5)
            s.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            end = time.time() + self.rng.uniform(0.5, 3)
            got = b""
            while time.time() < end and len(got) < 1 << 20:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                got += chunk
            s.close()
            m = re.match(rb"HTTP/1\.[01] (\d{3})", got)
            self.c.stats.count("events", outcome_of(int(m.group(1))) if m else "closed")
        except OSError:
            self.c.stats.count("events", "conn_error")

    ACTIONS = [
        (30, "synthetic_infer"), (12, "real_infer"), (10, "reads"), (14, "invalid"),
        (1, "admin_bad_timeout"), (14, "hostile"), (2, "cold_start_storm"), (2, "events"),
    ]

    def step(self):
        total = sum(w for w, _ in self.ACTIONS)
        r = self.rng.randrange(total)
        for w, name in self.ACTIONS:
            if r < w:
                return getattr(self, name)()
            r -= w


# ---- the run ------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--budget", default="384MiB")
    ap.add_argument("--memory-max", default="1GiB",
                    help="cgroup limit for larderd (bytes or NKiB/MiB/GiB); 0: none")
    ap.add_argument("--no-real", action="store_true", help="synthetic models only")
    ap.add_argument("--reload-every", type=float, default=10)
    ap.add_argument("--cleanup-every", type=float, default=7)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    seconds = min(args.seconds, MAX_SECONDS)
    seed = args.seed if args.seed is not None else int(time.time())
    build = os.path.abspath(args.build)
    real = not args.no_real

    work = tempfile.mkdtemp(prefix="larder-soak-")
    shutil.copy(os.path.join(EXAMPLES, "admin.tokens"), os.path.join(work, "admin.tokens"))
    generation = 0
    write_config(os.path.join(work, "larder.ini"), generation, args.budget, real)

    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    mm = re.match(r"^(\d+)\s*([kmg])?i?b?$", args.memory_max.strip().lower())
    limit = int(mm.group(1)) * units.get(mm.group(2) or "", 1) if mm else 0
    cgroup = Cgroup(limit) if limit else None

    port = free_port()
    d = Daemon(build, work, port)
    in_cgroup = cgroup.add(d.proc.pid) if cgroup else False
    stats = Stats()
    deadline = time.time() + seconds
    client = Client(port, stats, deadline)

    # wait for /health
    up = False
    for _ in range(200):
        if not d.alive():
            break
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            up = c.getresponse().status == 200
            c.close()
        except OSError:
            pass
        if up:
            break
        time.sleep(0.05)
    if not up:
        print("soak: larderd did not come up (%s)\n%s" % (d.describe_exit(), d.log_tail()))
        if cgroup:
            if d.alive():
                d.proc.kill()
                d.proc.wait()
            cgroup.remove()
        return 1
    rss_start = rss_kib(d.proc.pid)
    rss_peak = [rss_start or 0]
    hung = [False]
    checks = [0]
    budget_broken = [0]
    stop = threading.Event()
    print("soak: larderd pid %d on port %d, %d s, %d clients, seed %d, budget %s, %s%s" % (
        d.proc.pid, port, seconds, args.clients, seed, args.budget,
        "real engines and synthetic models" if real else "synthetic models",
        (", cgroup %s limit %s (%s)" % (cgroup.kind, args.memory_max, cgroup.path))
        if in_cgroup else ""))
    if cgroup and not in_cgroup:
        print("soak: " + cgroup.note)
    sys.stdout.flush()

    def worker(i):
        t = Traffic(client, real, random.Random(seed * 1000 + i))
        while not stop.is_set() and time.time() < deadline and d.alive():
            t.step()

    def admin_loop():
        nonlocal generation
        rng = random.Random(seed)
        next_reload = time.time() + args.reload_every
        next_cleanup = time.time() + args.cleanup_every
        cfg = os.path.join(work, "larder.ini")
        while not stop.is_set() and time.time() < deadline and d.alive():
            now = time.time()
            if now >= next_reload:
                generation += 1
                broken = rng.random() < 0.2
                write_config(cfg, generation, args.budget, real, broken=broken)
                client.request("reload", "POST", "/v1/reload", b"", admin=True,
                               timeout=60, expect=("4xx",) if broken else ("2xx",))
                if broken:
                    write_config(cfg, generation, args.budget, real)
                    client.request("reload", "POST", "/v1/reload", b"", admin=True,
                                   timeout=60, expect=("2xx",))
                next_reload = now + args.reload_every
            if now >= next_cleanup:
                client.request("cleanup", "POST", "/v1/memory/cleanup", b"", admin=True,
                               timeout=60, expect=("2xx",))
                next_cleanup = now + args.cleanup_every
            time.sleep(0.2)

    def monitor():
        fails = 0
        while not stop.is_set() and time.time() < deadline and d.alive():
            r = rss_kib(d.proc.pid)
            if r:
                rss_peak[0] = max(rss_peak[0], r)
            t0 = time.time()
            ok = False
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("GET", "/health")
                ok = c.getresponse().status == 200
                c.close()
            except (OSError, http.client.HTTPException):
                pass
            dt = time.time() - t0
            with stats.lock:
                stats.health_max = max(stats.health_max, dt)
                if not ok:
                    stats.health_fail += 1
            fails = 0 if ok else fails + 1
            if fails >= 3 and d.alive():
                hung[0] = True
            checks[0] += 1
            if ok and checks[0] % 5 == 0:
                # rule 2 of DESIGN.md: reservations never exceed the budget
                _, mem = client.request("monitor", "GET", "/v1/memory?history=0", timeout=10)
                if isinstance(mem, dict) and "reserved_bytes" in mem:
                    over = mem["reserved_bytes"] - mem["budget_bytes"]
                    if over > 0:
                        stats.odd("reserved_bytes over the budget by %d" % over)
                        budget_broken[0] += 1
            time.sleep(1)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(args.clients)]
    threads += [threading.Thread(target=admin_loop, daemon=True),
                threading.Thread(target=monitor, daemon=True)]
    t_start = time.time()
    for t in threads:
        t.start()
    last = t_start
    while time.time() < deadline and d.alive():
        time.sleep(0.5)
        if time.time() - last >= 30:
            last = time.time()
            with stats.lock:
                served = sum(stats.by_class.values())
            print("soak: %3.0f s, %d requests, RSS %s KiB" % (
                last - t_start, served, rss_kib(d.proc.pid)))
            sys.stdout.flush()
    stop.set()
    for t in threads:
        t.join(timeout=90)
    elapsed = time.time() - t_start

    died = not d.alive()
    rss_end = rss_kib(d.proc.pid) if not died else None
    seen_cgroup = None  # the cgroup as larderd reports it
    if not died:
        _, mem = client.request("final", "GET", "/v1/memory?history=0", timeout=30)
        if isinstance(mem, dict):
            seen_cgroup = mem.get("cgroup")
    mem_events = cgroup.read("memory.events") if in_cgroup and cgroup.kind == "v2" else None
    failcnt = cgroup.read("memory.failcnt") if in_cgroup and cgroup.kind == "v1" else None
    clean_stop = False
    if not died:
        d.proc.send_signal(signal.SIGTERM)
        try:
            d.proc.wait(timeout=60)
            clean_stop = d.proc.returncode == 0
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
    if cgroup:
        cgroup.remove()

    # ---- report ----
    total = sum(stats.by_class.values())
    print("\nsoak: %.0f s, %d requests (%.1f/s)" % (elapsed, total, total / max(elapsed, 1)))
    print("  by class: " + ", ".join("%s %d" % kv for kv in sorted(stats.by_class.items())))
    for kind in sorted(stats.by_kind):
        print("  %-8s %s" % (kind, ", ".join("%s %d" % kv
                                              for kv in sorted(stats.by_kind[kind].items()))))
    if stats.codes_5xx:
        print("  5xx codes: " + ", ".join("%s %d" % kv for kv in stats.codes_5xx.most_common()))
    if stats.codes_4xx:
        print("  4xx codes (top 12): " + ", ".join("%s %d" % kv
                                                  for kv in stats.codes_4xx.most_common(12)))
    if stats.unexpected:
        print("  unexpected replies (top 10):")
        for what, n in stats.unexpected.most_common(10):
            print("    %5d  %s" % (n, what))
    print("  reloads: %d config generations" % generation)
    print("  /health: slowest %.3f s, %d failed checks" % (stats.health_max, stats.health_fail))
    print("  RSS: start %s KiB, peak %s KiB, end %s KiB" % (rss_start, rss_peak[0], rss_end))
    if mem_events:
        print("  cgroup memory.events: " + mem_events.replace("\n", ", "))
    if failcnt is not None:
        print("  cgroup memory.failcnt: %s" % failcnt)
    if isinstance(seen_cgroup, dict):
        print("  larderd's view of its cgroup: v%s, current %s, max %s, events %s" % (
            seen_cgroup.get("version"), seen_cgroup.get("current_bytes"),
            seen_cgroup.get("max_bytes"), seen_cgroup.get("events")))
    print("  larderd: %s" % ("died: " + d.describe_exit() if died else
                             "stopped on SIGTERM: " + d.describe_exit()))
    print("  budget: reserved_bytes above budget_bytes in %d of %d checks" % (
        budget_broken[0], checks[0] // 5))
    bad = died or hung[0] or not clean_stop or budget_broken[0] > 0
    if hung[0]:
        print("soak: FAILED: larderd stopped answering /health")
    if bad:
        print("soak: FAILED; larderd's log ends:\n" + d.log_tail())
    if args.keep or bad:
        print("soak: work directory kept: %s" % work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
