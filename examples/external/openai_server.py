#!/usr/bin/python3
"""A small OpenAI-compatible model server, for larder's external models with api = openai.

It stands where a user's own llama-server or vLLM would: larderd starts it on first use,
proxies OpenAI's routes to it by the model's name, and stops it when idle. Its "model" is
deterministic, so a client can check every reply:
  GET  /health                 200
  GET  /v1/models              the one model it serves (--model)
  POST /v1/chat/completions    the reply "you said: " + the last user message's words, cut
                               at max_tokens words; stream: true sends one server-sent
                               event per word, then [DONE]
  POST /v1/completions         the same for a prompt
  POST /v1/embeddings          8 floats per input, drawn from the text's SHA-256 (float, or
                               base64 of little-endian float32 as the openai client asks)
  GET  /pid                    {"pid": ...} of this process
  GET  /held?id=ID             {"held": true} once a request naming hold:ID waits
  POST /release?id=ID          lets the requests naming hold:ID go on
A message or prompt holding the word hold:ID waits for POST /release?id=ID: a chat without
stream before its reply, a streamed one after its first word (so a client can see that
word arrive before the others exist). Only Python's standard library is used.
"""
import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

DIM = 8
HOLD_BOUND_S = 120


class Gates:
    lock = threading.Lock()
    events = {}
    held = set()

    @classmethod
    def event(cls, key):
        with cls.lock:
            return cls.events.setdefault(key, threading.Event())

    @classmethod
    def wait(cls, key):
        with cls.lock:
            cls.held.add(key)
        return cls.event(key).wait(HOLD_BOUND_S)


def hold_key(text):
    for word in text.split():
        if word.startswith("hold:"):
            return word[5:]
    return None


def reply_words(text, max_tokens):
    words = ["you", "said:"] + text.split()
    finish = "stop"
    if max_tokens is not None and len(words) > max_tokens:
        words = words[:max_tokens]
        finish = "length"
    return [w if i == 0 else " " + w for i, w in enumerate(words)], finish


def embedding(text):
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 127.5) / 127.5 for b in digest[:DIM]]


class BadRequest(Exception):
    pass


def content_text(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise BadRequest("'content' must be a string or an array of parts")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    model = "model"

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        sys.stderr.write((fmt % args) + "\n")

    def log_request(self, code="-", size="-"):
        pass

    def reply(self, status, obj):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self._headers_buffer.append(b"\r\n" + body)
        self.flush_headers()

    def error(self, status, message, kind="invalid_request_error"):
        self.reply(status, {"error": {"message": message, "type": kind, "code": None}})

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def event(self, obj):
        self.chunk(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        if url.path == "/health":
            self.reply(200, {"status": "ok"})
        elif url.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 0, "owned_by": "example"}]})
        elif url.path == "/pid":
            self.reply(200, {"pid": os.getpid()})
        elif url.path == "/held":
            with Gates.lock:
                held = q.get("id", [""])[0] in Gates.held
            self.reply(200, {"held": held})
        else:
            self.error(404, "no route " + url.path)

    def do_POST(self):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path == "/release":
            Gates.event(parse_qs(url.query).get("id", [""])[0]).set()
            self.reply(200, {"released": True})
            return
        routes = {"/v1/chat/completions": self.chat, "/v1/completions": self.completion,
                  "/v1/embeddings": self.embeddings}
        route = routes.get(url.path)
        if not route:
            self.error(404, "no route " + url.path)
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            route(body)
        except (ValueError, BadRequest) as e:
            self.error(400, str(e))

    def generate(self, body, text, chat):
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise BadRequest("'max_tokens' must be a positive integer")
        words, finish = reply_words(text, max_tokens)
        key = hold_key(text)
        ident = "cmpl-%d" % time.monotonic_ns()
        kind = "chat.completion" if chat else "text_completion"
        usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(words),
                 "total_tokens": len(text.split()) + len(words)}
        head = {"id": ident, "created": int(time.time()), "model": body.get("model", self.model)}
        if not body.get("stream"):
            if key is not None:
                Gates.wait(key)
            out = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": out},
                       "finish_reason": finish} if chat
                      else {"index": 0, "text": out, "finish_reason": finish})
            self.reply(200, dict(head, object=kind, choices=[choice], usage=usage))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        kind += ".chunk" if chat else ""
        for i, w in enumerate(words):
            if i == 1 and key is not None:
                Gates.wait(key)
            piece = ({"index": 0, "delta": dict({"role": "assistant"} if i == 0 else {},
                                                content=w), "finish_reason": None} if chat
                     else {"index": 0, "text": w, "finish_reason": None})
            self.event(dict(head, object=kind, choices=[piece]))
        last = ({"index": 0, "delta": {}, "finish_reason": finish} if chat
                else {"index": 0, "text": "", "finish_reason": finish})
        self.event(dict(head, object=kind, choices=[last]))
        if (body.get("stream_options") or {}).get("include_usage"):
            self.event(dict(head, object=kind, choices=[], usage=usage))
        self.chunk(b"data: [DONE]\n\n")
        self.chunk(b"")

    def chat(self, body):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise BadRequest("'messages' holds no user message")
        self.generate(body, content_text(users[-1].get("content", "")), True)

    def completion(self, body):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
        self.generate(body, prompt, False)

    def embeddings(self, body):
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or \
                not all(isinstance(t, str) for t in inputs):
            raise BadRequest("'input' must be a string or an array of strings")
        base64_out = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            v = embedding(text)
            if base64_out:
                v = base64.b64encode(struct.pack("<%df" % len(v), *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": v})
        tokens = sum(len(t.split()) for t in inputs)
        self.reply(200, {"object": "list", "model": body.get("model", self.model), "data": data,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="model", help="the name /v1/models lists")
    a = ap.parse_args()
    Handler.model = a.model
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    print("serving an OpenAI-compatible model '%s' on 127.0.0.1:%d" % (a.model, a.port),
          file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
