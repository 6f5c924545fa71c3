"""Talking to model servers: one pooled HTTP client per process, health probes, and a
POST whose whole reply, whole or streamed, is bounded in time and size. httpx's errors
become greenroom's here."""

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from .errors import ContainerLost, ContainerTimeout, ContainerUnreachable, ModelError

_lock = threading.Lock()
_clients: dict[int, httpx.Client] = {}
CONNECT_TIMEOUT_S = 5.0  # a container that takes no connection within this is unreachable


def http_client() -> httpx.Client:
    """Built after any fork, shared by the process's threads (httpx clients are thread-safe)."""
    with _lock:
        client = _clients.get(os.getpid())
        if client is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            client = _clients[os.getpid()] = httpx.Client(timeout=5.0, limits=limits)
        return client


def is_healthy(endpoint: str, health_path: str, timeout: float = 1.0) -> bool:
    """GET <endpoint><health_path> answers 200 once the model is loaded."""
    try:
        return http_client().get(endpoint + health_path, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def post_bounded(url: str, payload: dict, key: str, within_s: float, max_bytes: int) -> dict:
    """POST JSON with the server's bearer key; its JSON reply, read within within_s of
    wall-clock time however slowly it trickles (ContainerTimeout) and never past max_bytes
    (ModelError, the rest unread). ContainerUnreachable: it took no connection (the message
    never reached it). ContainerLost: it stopped answering. ModelError (with the status):
    it answered something other than 200 and JSON."""
    with _reply(url, payload, key, within_s) as response:
        body = _read_capped(response, max_bytes)
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ModelError("model server answered 200 with a body that is not JSON", 200) from exc


def post_streamed(url: str, payload: dict, key: str, within_s: float, max_bytes: int) -> Iterator[dict]:
    """As post_bounded, for a reply streamed as server-sent events: yields each event's
    data (a chat.completion.chunk) as it arrives, until `data: [DONE]`, the whole within
    within_s and max_bytes. A stream that ends before [DONE] is ContainerLost."""
    with _reply(url, payload, key, within_s) as response:
        size = 0
        for line in response.iter_lines():
            size += len(line) + 1
            if size > max_bytes:
                raise ModelError(f"the model server's reply is larger than {max_bytes} bytes")
            if not line.startswith("data:"):
                continue  # a comment, an event name, the blank line between events
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                return
            try:
                yield json.loads(data)
            except ValueError as exc:
                raise ModelError("the model server streamed a chunk that is not JSON", 200) from exc
        raise ContainerLost("the model server's stream ended before [DONE]")


@contextmanager
def _reply(url: str, payload: dict, key: str, within_s: float) -> Iterator[httpx.Response]:
    """The server's 200 response, open for reading until within_s has passed; its errors
    translated."""
    deadline = time.monotonic() + within_s
    timeout = httpx.Timeout(within_s, connect=min(CONNECT_TIMEOUT_S, within_s))
    try:
        with http_client().stream("POST", url, json=payload, headers={"Authorization": f"Bearer {key}"},
                                  timeout=timeout) as response, _cut_off_at(deadline, response):
            if response.status_code != 200:
                text = _head(response, 500).decode(errors="replace")
                raise ModelError(f"model server answered {response.status_code}: {text}", response.status_code)
            yield response
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ContainerUnreachable(f"the model server took no connection: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise ContainerTimeout(f"the model server gave no reply within {within_s:g}s") from exc
    except httpx.TransportError as exc:
        if time.monotonic() >= deadline:  # our cut-off, not the server's doing
            raise ContainerTimeout(f"the model server's reply took longer than {within_s:g}s") from exc
        raise ContainerLost(f"the model server stopped answering: {exc}") from exc


@contextmanager
def _cut_off_at(deadline: float, response: httpx.Response) -> Iterator[None]:
    """Shut the connection's socket at the deadline, so a read blocked on a server that
    trickles returns at once: httpx's timeouts bound each read, not the whole reply."""
    sock = response.extensions["network_stream"].get_extra_info("socket")
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, (sock,))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _shut(sock) -> None:
    try:
        sock.shutdown(2)  # SHUT_RDWR: the blocked recv returns, the connection is not reused
    except OSError:
        pass  # closed meanwhile


def _head(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of the body (an error's text: the rest is not read)."""
    head = b""
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    return head[:limit]


def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    if int(response.headers.get("Content-Length") or 0) > max_bytes:
        raise ModelError(f"the model server's reply is larger than {max_bytes} bytes")
    body, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ModelError(f"the model server's reply is larger than {max_bytes} bytes")
        body.append(chunk)
    return b"".join(body)
