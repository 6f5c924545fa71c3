"""Reference AI model server for greenroom (standard library only).

A deterministic chatbot behind an OpenAI-style API. It simulates a slow model load
(BOOT_SECONDS), keeps one conversation's memory inside the process (which is why
sessions are sticky), and has fault switches for tests. With API_KEY set, chat requests
must carry it as a bearer token (401 otherwise); /healthz stays open.

  FAULT_NEVER_HEALTHY=1        never finish booting
  FAULT_EXIT_AFTER_REPLIES=N   exit(1) right after sending the Nth reply
  FAULT_HANG_REPLIES=1         chat requests never get an answer
  REPLY_DELAY_SECONDS=F        sleep F seconds before each reply
  FAULT_CRASH_AT_BOOT=1        exit(3) at once
  FAULT_TRICKLE_SECONDS=F      send each reply one byte at a time, F seconds apart
  FAULT_REPLY_PADDING=N        pad each reply with N bytes
  FAULT_ERROR_STATUS=NNN       answer chat requests with this HTTP status (a failing model)
  FAULT_EXIT_AFTER_CHUNKS=N    a streamed reply: exit(1) right after its Nth chunk
  FAULT_HANG_AFTER_CHUNKS=N    a streamed reply: never send more after its Nth chunk

With `"stream": true` a reply comes as server-sent events, OpenAI's chat.completion.chunk
objects one word each, STREAM_CHUNK_SECONDS apart, then `data: [DONE]`; with
`stream_options.include_usage` a last chunk carries the usage.
"""

import hmac
import json
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY_BYTES = 1024 * 1024
DRAIN_LIMIT_BYTES = 16 * MAX_BODY_BYTES  # oversized bodies up to this are read and dropped
ROLES = frozenset({"system", "user", "assistant", "tool"})
NAME_INTRO = re.compile(r"\bmy name is\s+(\S+)", re.IGNORECASE)
NAME_QUESTION = re.compile(
    r"\b(what(?:'s| is)\s+my\s+name|do you (?:know|remember) my name|who am i)\b",
    re.IGNORECASE,
)
PUNCTUATION = ".,;:!?\"'()[]{}<>"


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    boot_seconds: float
    instance: str
    never_healthy: bool
    exit_after_replies: int  # 0 = never
    hang_replies: bool
    reply_delay: float
    trickle_seconds: float  # 0 = send replies whole
    reply_padding: int
    error_status: int  # 0 = answer normally
    chunk_seconds: float  # between the chunks of a streamed reply
    exit_after_chunks: int  # 0 = never
    hang_after_chunks: int  # 0 = never
    api_key: str  # "" = no key required


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def load_config() -> Config:
    env = os.environ.get
    return Config(
        host=env("HOST", "127.0.0.1"),
        port=int(env("PORT", "8000")),
        boot_seconds=float(env("BOOT_SECONDS", "5")),
        instance=env("INSTANCE_ID") or socket.gethostname(),
        never_healthy=_flag("FAULT_NEVER_HEALTHY"),
        exit_after_replies=int(env("FAULT_EXIT_AFTER_REPLIES") or 0),
        hang_replies=_flag("FAULT_HANG_REPLIES"),
        reply_delay=max(0.0, float(env("REPLY_DELAY_SECONDS") or 0)),
        trickle_seconds=max(0.0, float(env("FAULT_TRICKLE_SECONDS") or 0)),
        reply_padding=max(0, int(env("FAULT_REPLY_PADDING") or 0)),
        error_status=int(env("FAULT_ERROR_STATUS") or 0),
        chunk_seconds=max(0.0, float(env("STREAM_CHUNK_SECONDS") or 0)),
        exit_after_chunks=int(env("FAULT_EXIT_AFTER_CHUNKS") or 0),
        hang_after_chunks=int(env("FAULT_HANG_AFTER_CHUNKS") or 0),
        api_key=env("API_KEY", ""),
    )


class RequestError(Exception):
    """A client error, rendered as an OpenAI-style JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Memory:
    """Everything this process has been told: one process, one conversation."""

    def __init__(self):
        self._lock = threading.Lock()
        self.turns = 0
        self.name = None

    def reply_to(self, text: str) -> tuple[int, str]:
        """Learn from the user's latest message and answer it; returns (turn, reply)."""
        with self._lock:
            self.turns += 1
            intro = extract_name(text)
            if intro:
                self.name = intro
            return self.turns, compose_reply(self.turns, text, self.name, intro)


def extract_name(text: str) -> str | None:
    match = NAME_INTRO.search(text)
    return (match.group(1).strip(PUNCTUATION) or None) if match else None


def compose_reply(turn: int, text: str, name: str | None, intro: str | None) -> str:
    if NAME_QUESTION.search(text):
        return f"Your name is {name}." if name else "I don't know your name yet."
    if intro:
        return f"Turn {turn}: nice to meet you, {intro}."
    return f'Turn {turn}: you said "{text}".'


def validate_chat_request(body) -> tuple[str, list]:
    """Returns (model, messages) or raises RequestError."""
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_request", "request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, "invalid_request", "'model' must be a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "invalid_request", "'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        validate_message(index, message)
    return model or "chatbot", messages


def validate_message(index: int, message) -> None:
    role = message.get("role") if isinstance(message, dict) else None
    if not isinstance(role, str) or role not in ROLES:
        raise RequestError(
            400, "invalid_request", f"messages[{index}].role must be one of {sorted(ROLES)}"
        )
    if not isinstance(message.get("content"), str):
        raise RequestError(400, "invalid_request", f"messages[{index}].content must be a string")


def last_user_text(messages: list) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def count_tokens(text: str) -> int:
    return len(text.split())


def completion(model: str, messages: list, reply: str, turn: int, instance: str) -> dict:
    prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
    completion_tokens = count_tokens(reply)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "greenroom_container": {"instance": instance, "turn": turn},
    }


def stream_options(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) of a request."""
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "invalid_request", "'stream' must be a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "invalid_request", "'stream_options' must be an object")
    return stream, bool(options.get("include_usage"))


def chunks_of(payload: dict, include_usage: bool) -> list[dict]:
    """A completion as the chat.completion.chunk objects of a streamed reply: the role,
    then a word each, then the finish reason (and the usage, if asked for)."""
    base = {key: payload[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def chunk(delta: dict, finish_reason=None, **extra) -> dict:
        return base | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]} | extra

    words = payload["choices"][0]["message"]["content"].split(" ")
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": word if n == 0 else f" {word}"}) for n, word in enumerate(words)]
    chunks.append(chunk({}, "stop", greenroom_container=payload["greenroom_container"]))
    if include_usage:
        chunks.append(base | {"choices": [], "usage": payload["usage"]})
    return chunks


def parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:  # includes JSONDecodeError and UnicodeDecodeError
        raise RequestError(400, "invalid_json", "request body is not valid JSON") from None


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


class ChatbotHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response sets Content-Length
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # holds the body back until the client's delayed ACK, 40 ms later, on a reused connection.
    disable_nagle_algorithm = True
    server_version = "greenroom-chatbot/1.0"
    sys_version = ""
    routes = {  # path -> (method, handler name)
        "/healthz": ("GET", "handle_health"),
        "/v1/chat/completions": ("POST", "handle_chat"),
    }

    # self.server (a ChatbotServer) carries the config, the memory and the boot clock.

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    def dispatch(self):
        path = self.path.split("?", 1)[0]
        try:
            if path not in self.routes:
                raise RequestError(404, "not_found", f"no route for {path}")
            method, handler = self.routes[path]
            if self.command != method:
                raise RequestError(405, "method_not_allowed", f"{path} only accepts {method}")
            getattr(self, handler)()
        except RequestError as exc:
            self.send_json(exc.status, error_body(exc.code, exc.message))

    def handle_health(self):
        if self.server.booted():
            self.send_json(200, {"status": "ok"})
        else:
            self.send_json(503, {"status": "booting"})

    def handle_chat(self):
        raw = self.read_body()
        self.authorize()
        if not self.server.booted():
            raise RequestError(503, "booting", "the model is still loading")
        body = parse_json(raw)
        model, messages = validate_chat_request(body)
        stream, include_usage = stream_options(body)
        config = self.server.config
        if config.hang_replies:
            threading.Event().wait()  # FAULT_HANG_REPLIES: never answer
        time.sleep(config.reply_delay)
        if config.error_status:
            raise RequestError(config.error_status, "model_failure", "FAULT_ERROR_STATUS: the model failed")
        turn, reply = self.server.memory.reply_to(last_user_text(messages))
        last = turn == config.exit_after_replies
        payload = completion(model, messages, reply, turn, config.instance)
        if config.reply_padding:
            payload["padding"] = "x" * config.reply_padding
        if stream:
            self.send_stream(chunks_of(payload, include_usage))
        else:
            self.send_json(200, payload, last, trickle_seconds=config.trickle_seconds)
        if last:
            os._exit(1)  # FAULT_EXIT_AFTER_REPLIES: the reply is already flushed

    def authorize(self):
        key = self.server.config.api_key
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if key and not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())):
            raise RequestError(401, "unauthorized", "a valid bearer token is required")

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise RequestError(411, "length_required", "send a Content-Length body")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise RequestError(400, "invalid_request", "bad Content-Length") from None
        if length > MAX_BODY_BYTES:
            self.discard_body(length)
            raise RequestError(413, "payload_too_large", f"body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def discard_body(self, length: int):
        """Drop an oversized body so the client reads our 413 rather than a reset."""
        self.close_connection = True
        remaining = min(length, DRAIN_LIMIT_BYTES)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 64 * 1024))
            if not chunk:
                break
            remaining -= len(chunk)

    def send_json(self, status: int, payload: dict, close: bool = False, trickle_seconds: float = 0.0):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close or self.close_connection:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            pass
        elif trickle_seconds:
            for byte in data:  # FAULT_TRICKLE_SECONDS: a reply that never stops arriving
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(trickle_seconds)
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def send_stream(self, chunks: list[dict]):
        """Server-sent events, one chunk each, then [DONE], in HTTP chunked encoding (so a
        reply cut short reads as cut short, not as a reply that ended)."""
        config = self.server.config
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for sent, chunk in enumerate(chunks, start=1):
            self.write_chunk(f"data: {json.dumps(chunk)}\n\n".encode())
            if sent == config.exit_after_chunks:
                os._exit(1)  # FAULT_EXIT_AFTER_CHUNKS
            if sent == config.hang_after_chunks:
                threading.Event().wait()  # FAULT_HANG_AFTER_CHUNKS
            time.sleep(config.chunk_seconds)
        self.write_chunk(b"data: [DONE]\n\n")
        self.write_chunk(b"")  # the last chunk: the reply is whole

    def write_chunk(self, data: bytes):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def send_error(self, code, message=None, explain=None):
        """Protocol errors raised by http.server (bad request line, ...) as JSON too."""
        self.close_connection = True
        self.send_json(code, error_body("http_error", message or self.responses[code][0]))

    def log_request(self, code="-", size="-"):
        sys.stderr.write(f'{self.address_string()} "{self.requestline}" {code}\n')

    def log_error(self, format, *args):
        pass  # log_request already wrote this request's one line


class ChatbotServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: Config):
        self.config = config
        self.memory = Memory()
        self.started = time.monotonic()
        if ":" in config.host:
            self.address_family = socket.AF_INET6
        super().__init__((config.host, config.port), ChatbotHandler)

    def server_bind(self):
        """Bind without HTTPServer's reverse-DNS lookup, which can stall a boot."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.config.host, self.server_address[1]

    def booted(self) -> bool:
        if self.config.never_healthy:
            return False
        return time.monotonic() - self.started >= self.config.boot_seconds


def exit_on_sigterm(signum, frame):
    raise SystemExit(0)  # unwinds serve_forever in the main thread


def main() -> int:
    if _flag("FAULT_CRASH_AT_BOOT"):
        sys.stderr.write("chatbot: FAULT_CRASH_AT_BOOT set, exiting\n")
        return 3
    try:
        config = load_config()
    except ValueError as exc:
        sys.stderr.write(f"chatbot: bad configuration: {exc}\n")
        return 2
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    signal.signal(signal.SIGINT, exit_on_sigterm)
    try:
        server = ChatbotServer(config)
    except OSError as exc:
        sys.stderr.write(f"chatbot: cannot listen on {config.host}:{config.port}: {exc}\n")
        return 1
    with server:
        sys.stderr.write(f"chatbot: {config.instance} listening on {config.host}:{config.port}\n")
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
