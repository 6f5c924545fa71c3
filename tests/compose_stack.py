"""The shipped docker-compose.yml, brought up on host networking for tests.

Bridge networks cannot run on the test machines (dockerd --bridge=none), and docker-compose
1.29 cannot lift a service's `networks` in an override file ('network_mode' and 'networks'
cannot be combined). So `host_network_variant` derives, from the shipped file, the same file
with every service on host networking (networks and published ports dropped, nothing else
changed), and the test's own settings (loopback ports, images, the pool) go in an ordinary
override file on top of it.
"""

import copy
import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def host_network_variant(doc: dict) -> dict:
    """doc with every service on the host's network; relative paths made absolute (the
    variant is written elsewhere)."""
    doc = copy.deepcopy(doc)
    doc.pop("networks", None)
    for service in doc["services"].values():
        service.pop("ports", None)
        if service.pop("networks", None) is not None or "network_mode" not in service:
            service["network_mode"] = "host"
        if "build" in service:
            service["build"]["context"] = str(REPO / service["build"]["context"])
        if "volumes" in service:
            service["volumes"] = [_absolute(volume) for volume in service["volumes"]]
    return doc


def _absolute(volume: str) -> str:
    source, _, rest = volume.partition(":")
    return f"{REPO / source}:{rest}" if source.startswith(".") else volume


def compose_command() -> list[str] | None:
    """`docker compose` (v2) where the plugin is installed, else docker-compose (v1)."""
    if shutil.which("docker"):
        v2 = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if v2.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


class ComposeProject:
    """One compose project (unique name) from files in folder, with settings passed as an
    env file (mode 0600) and no other environment, so nothing of the caller's shell or a
    .env beside docker-compose.yml leaks in."""

    def __init__(self, command: list[str], name: str, folder: Path, files: dict[str, dict], env: dict[str, str]):
        self.name, self.folder = name, folder
        paths = []
        for filename, doc in files.items():
            (folder / filename).write_text(yaml.safe_dump(doc, sort_keys=False))
            paths += ["-f", str(folder / filename)]
        env_file = folder / "compose.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        self.argv = [*command, "--project-name", name, "--project-directory", str(REPO),
                     "--env-file", str(env_file), *paths]
        self.env = {key: os.environ[key] for key in ("PATH", "HOME", "DOCKER_HOST") if key in os.environ}

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"compose {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def logs(self) -> str:
        done = self.run("logs", "--no-color", "--timestamps", timeout=60, check=False)
        return done.stdout + done.stderr

    def container_id(self, service: str) -> str:
        return self.run("ps", "-q", service, timeout=60).stdout.strip()

    def down(self) -> None:
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "10", timeout=180, check=False)
