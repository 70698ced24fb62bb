"""``mechinterp serve``: an OpenAI-compatible chat endpoint for any loaded model.

``POST /v1/chat/completions`` (greedy decoding, ``max_tokens``, ``logprobs`` /
``top_logprobs``) and ``GET /v1/models``, enough for ``OpenAIChat`` and any OpenAI client.

Built on the standard library's ``ThreadingHTTPServer``: no web framework to install, and
every guard is explicit code here. The request body is read only after the
``Content-Length`` header is checked against ``max_body_bytes`` (413 otherwise), parsed with
``json.loads`` and validated by a pydantic model (400/422 with the reason); nothing in a
request is ever evaluated or executed. With ``api_key`` set, requests without
``Authorization: Bearer KEY`` get 401 (compared in constant time). ``max_tokens`` above the
limit and prompts over ``max_prompt_tokens`` get 400; more than ``max_concurrency``
requests in flight get 429. The model runs one request at a time (a lock), so concurrency
bounds the queue, not the parallelism. The server binds ``127.0.0.1`` unless told otherwise.

Example:
    >>> server = ChatServer(LocalChat(model), ServerLimits(), port=0)   # any free port
    >>> server.start()                       # background thread
    >>> server.url                           # 'http://127.0.0.1:54321/v1'
    >>> server.stop()
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mechinterp.explain.chat import LocalChat


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """Bounds on what one request may ask for."""

    max_body_bytes: int = 1_000_000
    max_tokens: int = 256
    max_prompt_tokens: int = 4096
    max_concurrency: int = 4
    max_top_logprobs: int = 20


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    n: int = 1
    stream: bool = False


class ChatServer:
    """The HTTP server around a ``LocalChat``; ``start()`` runs it in a daemon thread,
    ``serve_forever()`` in the calling thread."""

    def __init__(
        self,
        chat: LocalChat,
        limits: ServerLimits | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        api_key: str | None = None,
    ):
        self.chat, self.limits, self.api_key = chat, limits or ServerLimits(), api_key
        self.model_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(self.limits.max_concurrency)
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.thread is not None:
            self.thread.join()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def answer(self, request: _ChatRequest) -> tuple[int, dict]:
        """Status and JSON body for a validated request."""
        limits = self.limits
        wanted = request.max_completion_tokens or request.max_tokens or min(16, limits.max_tokens)
        if wanted > limits.max_tokens:
            return 400, _error(f"max_tokens {wanted} is over this server's limit of {limits.max_tokens}")
        if request.temperature not in (None, 0.0):
            return 400, _error("this server decodes greedily: send temperature 0 or leave it out")
        if request.n != 1 or request.stream:
            return 400, _error("this server answers n=1 without streaming")
        top = request.top_logprobs or 0
        if top > limits.max_top_logprobs:
            return 400, _error(f"top_logprobs {top} is over the limit of {limits.max_top_logprobs}")
        prompt = self.chat.render([m.model_dump() for m in request.messages])
        if len(prompt) > limits.max_prompt_tokens:
            return 400, _error(
                f"the prompt has {len(prompt)} tokens; the limit is {limits.max_prompt_tokens}"
            )
        with self.model_lock:
            ids, steps = self.chat.generate(
                prompt, max_tokens=wanted, top_logprobs=top if request.logprobs else 0
            )
        decode = self.chat.tokenizer.decode
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": decode(ids, skip_special_tokens=True)},
            "finish_reason": "length" if len(ids) == wanted else "stop",
            "logprobs": None,
        }
        if request.logprobs:
            choice["logprobs"] = {
                "content": [
                    {
                        "token": decode([token]),
                        "logprob": logprob,
                        "bytes": None,
                        "top_logprobs": [
                            {"token": decode([t]), "logprob": lp, "bytes": None} for t, lp in alternatives
                        ],
                    }
                    for token, (logprob, alternatives) in zip(ids, steps, strict=True)
                ]
            }
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.chat.name,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": len(ids),
                "total_tokens": len(prompt) + len(ids),
            },
        }


def _error(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind}}


class _Handler(BaseHTTPRequestHandler):
    server_state: ChatServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request (a slow or short body cannot hold a thread)

    def log_message(self, format: str, *args) -> None:  # quiet: one line per request is noise in tests
        return

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        key = self.server_state.api_key
        if key is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {key}".encode())

    def do_GET(self) -> None:
        if not self._authorised():
            return self._send(401, _error("missing or wrong API key", "authentication_error"))
        if self.path.rstrip("/") != "/v1/models":
            return self._send(404, _error(f"no route {self.path}; try /v1/models or /v1/chat/completions"))
        name = self.server_state.chat.name
        self._send(
            200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "mechinterp"}]}
        )

    def do_POST(self) -> None:
        state = self.server_state
        if not self._authorised():
            return self._send(401, _error("missing or wrong API key", "authentication_error"))
        if self.path.rstrip("/") != "/v1/chat/completions":
            return self._send(404, _error(f"no route {self.path}; POST to /v1/chat/completions"))
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._send(411, _error("a Content-Length header is required"))
        if int(length) > state.limits.max_body_bytes:
            return self._send(
                413,
                _error(f"request body of {length} bytes is over the limit of {state.limits.max_body_bytes}"),
            )
        raw = self.rfile.read(int(length))
        try:
            request = _ChatRequest.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            return self._send(400, _error(f"the body is not JSON: {error}"))
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            return self._send(422, _error(f"invalid chat request: {problems}"))
        if not state.slots.acquire(blocking=False):
            return self._send(429, _error("too many requests in flight; retry later", "rate_limit_error"))
        try:
            status, body = state.answer(request)
        except Exception as error:  # the model failed on this request; the server stays up
            status, body = 500, _error(f"{type(error).__name__}: {error}", "server_error")
        finally:
            state.slots.release()
        self._send(status, body)
