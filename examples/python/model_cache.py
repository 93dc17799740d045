"""A model cache for a business assistant, on larder.

Two churn models live on disk, as a model registry would keep them: a heavy XGBoost booster
and a light scikit-learn logistic regression. At start-up both are preloaded in parallel;
the registry reports each one's status, load time and version. When the heavy model cannot
load (its file is damaged), requests fall back to the light one; once a fixed version is on
disk, a reload puts the heavy model back.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/model_cache.py
"""
import hashlib
import os
import pickle
import sys
import tempfile
import time

import numpy as np
import xgboost as xgb
from sklearn.linear_model import LogisticRegression

import larder

FEATURES = 6


def customers(n, seed):
    """Synthetic customers: tenure, monthly fee, support tickets ... and whether they left."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    y = (x[:, 0] - 0.8 * x[:, 1] + 0.5 * x[:, 2] + rng.normal(scale=0.3, size=n) > 0)
    return x, y.astype(np.int32)


def train_models(root, version):
    x, y = customers(2000, seed=version)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "nthread": 1},
                        xgb.DMatrix(x, label=y), num_boost_round=20 + 10 * version)
    booster.save_model(os.path.join(root, "churn-xgb.json"))
    with open(os.path.join(root, "churn-linear.pkl"), "wb") as f:
        pickle.dump(LogisticRegression(max_iter=200).fit(x, y), f)


def version_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


class Cache:
    """What the assistant's hand-written model cache did, on larder."""

    def __init__(self, root):
        self.root = root
        self.versions = {}
        self.m = larder.Manager(budget="1GiB", ttl="10m")
        self.m.define("churn-xgb", self.load_xgb, memory="64MiB", preload=True,
                      fallback="churn-linear", priority=1)
        self.m.define("churn-linear", self.load_linear, memory="16MiB", preload=True)

    def load_xgb(self):
        path = os.path.join(self.root, "churn-xgb.json")
        booster = xgb.Booster(model_file=path)  # raises XGBoostError on a damaged file
        booster.set_param({"nthread": 1})
        self.versions["churn-xgb"] = version_of(path)
        return booster

    def load_linear(self):
        path = os.path.join(self.root, "churn-linear.pkl")
        with open(path, "rb") as f:
            model = pickle.load(f)
        self.versions["churn-linear"] = version_of(path)
        return model

    def predict(self, rows):
        lease = self.m.acquire("churn-xgb", timeout=30)
        with lease as model:
            if lease.served_by == "churn-xgb":
                p = model.predict(xgb.DMatrix(np.asarray(rows, dtype=np.float32)))
            else:
                p = model.predict_proba(np.asarray(rows, dtype=np.float32))[:, 1]
        return lease.served_by, [float(v) for v in p]

    def registry(self):
        return {name: {"status": c["state"], "load_ms": round(c["load_ms"]["last"], 1),
                       "version": self.versions.get(name), "loads": c["loads"],
                       "last_error": (c["last_error"] or {}).get("message")}
                for name, c in self.m.registry().items()}

    def reload(self, name):
        """A new version is on disk: drain the old one; the next request loads the new."""
        self.m.unload(name, timeout=30)


def wait_for(cond, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def main():
    with tempfile.TemporaryDirectory() as root:
        train_models(root, version=1)
        cache = Cache(root)
        events = cache.m.events(past=True, timeout=30)
        started = cache.m.preload()
        assert started == 2, started
        assert cache.m.wait_ready(timeout=60)
        reg = cache.registry()
        print("after preload:", reg)
        assert reg["churn-xgb"]["status"] == "ready" and reg["churn-linear"]["status"] == "ready"
        v1 = reg["churn-xgb"]["version"]
        # Both loads were started before either finished waiting: the preloads ran together.
        kinds = []
        for ev in events:
            kinds.append((ev["type"], ev.get("name")))
            if sum(1 for k, _ in kinds if k == "load_done") == 2:
                break
        assert {n for k, n in kinds if k == "load_start"} == {"churn-xgb", "churn-linear"}

        x, y = customers(200, seed=99)
        served, p = cache.predict(x)
        accuracy = float(np.mean((np.array(p) > 0.5) == y))
        print(f"served by {served}, accuracy {accuracy:.2f}")
        assert served == "churn-xgb" and accuracy > 0.8

        # The heavy model's file is damaged: a reload fails, and the light one serves.
        with open(os.path.join(root, "churn-xgb.json"), "w") as f:
            f.write("{ this is not a model")
        cache.reload("churn-xgb")
        served, p = cache.predict(x)
        accuracy = float(np.mean((np.array(p) > 0.5) == y))
        print(f"heavy broken: served by {served}, accuracy {accuracy:.2f}")
        assert served == "churn-linear" and accuracy > 0.8
        reg = cache.registry()
        assert reg["churn-xgb"]["status"] == "failed", reg
        assert "XGBoost" in (reg["churn-xgb"]["last_error"] or ""), reg
        try:
            cache.m.acquire("churn-xgb", fallback=False)
            raise AssertionError("the broken model loaded")
        except larder.LoadError as e:
            print("explicit load:", str(e).splitlines()[0])

        # Version 2 is published: once the cooldown is over the reload brings it in.
        train_models(root, version=2)
        wait_for(lambda: cache.m.registry()["churn-xgb"]["cooldown_ms"] == 0, "the cooldown")
        with cache.m.acquire("churn-xgb", fallback=False):
            pass
        reg = cache.registry()
        print("after reload:", reg)
        assert reg["churn-xgb"]["status"] == "ready"
        assert reg["churn-xgb"]["version"] != v1
        served, _ = cache.predict(x)
        assert served == "churn-xgb"
        cache.m.close()
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
