"""Runtime backends, registered by name as "module:Class" and imported on demand."""

import importlib

from ..errors import ConfigError
from .base import Instance, Runtime

REGISTRY = {
    "docker": "pool_manager.runtimes.docker:DockerRuntime",
    "process": "pool_manager.runtimes.process:ProcessRuntime",
    "kubernetes": "pool_manager.runtimes.kubernetes:KubernetesRuntime",
}

__all__ = ["Instance", "Runtime", "REGISTRY", "runtime_class"]


def runtime_class(name: str) -> type[Runtime]:
    try:
        module_name, class_name = REGISTRY[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown runtime {name!r}; known: {', '.join(REGISTRY)}") from None
    return getattr(importlib.import_module(module_name), class_name)
