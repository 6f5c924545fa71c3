"""One pooled HTTP client per process for talking to model servers, and health probes."""

import os
import threading

import httpx

_lock = threading.Lock()
_clients: dict[int, httpx.Client] = {}


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
