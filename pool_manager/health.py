"""Health probes: GET <endpoint><health_path> answers 200 once the model is loaded."""

import os
import threading

import httpx

_lock = threading.Lock()
_clients: dict[int, httpx.Client] = {}


def http_client() -> httpx.Client:
    """One pooled client per process (built after any fork), shared by its threads."""
    with _lock:
        client = _clients.get(os.getpid())
        if client is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            client = _clients[os.getpid()] = httpx.Client(timeout=5.0, limits=limits)
        return client


def is_healthy(endpoint: str, health_path: str, timeout: float = 1.0) -> bool:
    try:
        return http_client().get(endpoint + health_path, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False
