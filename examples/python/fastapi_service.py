"""A FastAPI service whose models larder loads lazily, behind its routes.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/fastapi_service.py \
        --port 8390 --token-file examples/admin.tokens

Routes:
  POST /v1/sentiment        {"text": "..."}            a scikit-learn text classifier
  POST /v1/churn            {"rows": [[6 floats], ...]} an XGBoost booster
  GET  /performance/memory  m.memory(): budget, reservations, RSS, cgroup, PSI, history
  GET  /performance/models  m.registry(): state, load times, hits, bytes per model
  POST /admin/cleanup       (Authorization: Bearer TOKEN) evicts what is idle, trims

Nothing loads at start-up: the first request to a route loads its model (once, however many
requests race for it) and later ones share it; idle models go after their ttl. Routes are
async and wait for a model without blocking the event loop. Errors are JSON:
{"error": {"code": ..., "message": ...}}.
"""
import argparse
import contextlib
import hmac
import os
import sys

import numpy as np
import uvicorn
import xgboost as xgb
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

import larder

REVIEWS = [
    ("great product, works perfectly", 1), ("excellent support and fast delivery", 1),
    ("love it, would buy again", 1), ("very good value, happy with it", 1),
    ("terrible, broke after one day", 0), ("awful support, never again", 0),
    ("bad quality and slow delivery", 0), ("waste of money, very disappointed", 0),
]


def load_sentiment():
    texts, labels = zip(*REVIEWS)
    return make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, labels)


def load_churn():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1000, 6)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(x, label=y), num_boost_round=15)
    return booster


class Text(BaseModel):
    text: str


class Rows(BaseModel):
    rows: list[list[float]]


def error(status, code, message):
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


LARDER_STATUS = {larder.NotFoundError: (404, "model_not_found"),
                 larder.TimeoutError: (503, "timeout"), larder.BusyError: (503, "busy"),
                 larder.BudgetError: (507, "no_memory"), larder.LoadError: (503, "load_failed"),
                 larder.ClosedError: (503, "closing"), larder.DrainingError: (503, "draining")}


def create_app(tokens, budget="1GiB"):
    m = larder.Manager(budget=budget, ttl="5m")
    m.define("sentiment", load_sentiment, memory="32MiB")
    m.define("churn", load_churn, memory="64MiB")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        m.close()

    app = FastAPI(lifespan=lifespan)
    app.state.larder = m

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc):
        return error(400, "bad_request", "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(larder.Error)
    async def larder_error(request, exc):
        for cls, (status, code) in LARDER_STATUS.items():
            if isinstance(exc, cls):
                return error(status, code, str(exc).splitlines()[0])
        return error(500, "internal", str(exc))

    @app.post("/v1/sentiment")
    async def sentiment(body: Text):
        async with m.acquire_async("sentiment", timeout=30) as model:
            p = float(model.predict_proba([body.text])[0][1])
        return {"positive": p, "label": "positive" if p >= 0.5 else "negative"}

    @app.post("/v1/churn")
    async def churn(body: Rows):
        if not body.rows or any(len(r) != 6 for r in body.rows):
            return error(400, "bad_request", "rows: each row needs 6 features")
        async with m.acquire_async("churn", timeout=30) as booster:
            p = booster.predict(xgb.DMatrix(np.asarray(body.rows, dtype=np.float32)))
        return {"churn": [float(v) for v in p]}

    @app.get("/performance/memory")
    async def memory():
        return m.memory(history=10)

    @app.get("/performance/models")
    async def models():
        return {"models": list(m.registry().values())}

    @app.post("/admin/cleanup")
    async def cleanup(request: Request):
        auth = request.headers.get("authorization", "")
        given = auth[7:].encode() if auth.startswith("Bearer ") else b""
        if not given or not any(hmac.compare_digest(given, t) for t in tokens):
            return error(401, "unauthorized", "a valid admin token is required")
        return {"trimmed": m.trim()}

    return app


def read_tokens(path):
    with open(path, "rb") as f:
        tokens = [line.strip() for line in f if line.strip() and not line.startswith(b"#")]
    if not tokens:
        raise SystemExit(f"{path}: no admin token")
    return tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8390)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--budget", default="1GiB")
    args = ap.parse_args()
    app = create_app(read_tokens(args.token_file), args.budget)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
