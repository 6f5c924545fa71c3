"""Model servers as local subprocesses on loopback ports: the embedded default where no
Docker engine is reachable, and a fast backend for tests.

Each server gets a record file in a state folder, which plays the part Docker's labels
play: any process of the same owner can list, adopt and destroy it, even after a restart.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from ..errors import RuntimeFailure
from ..settings import PoolSpec
from ..statedir import private_state_dir
from .base import SPEC_HASH, Instance, Runtime


def _start_time(pid: int) -> str | None:
    """The kernel's start time of pid, to tell a live server from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


class ProcessRuntime(Runtime):
    def __init__(self, owner: str, state_dir: Path | str | None = None):
        super().__init__(owner)
        self.folder = private_state_dir(Path(state_dir) if state_dir else None) / owner
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self._children: dict[str, subprocess.Popen] = {}  # started here, reaped here

    def create(self, instance_id: str, pool: str, spec: PoolSpec, port: int, key: str,
               spec_hash: str = "") -> Instance:
        log = open(self.folder / f"{instance_id}.log", "wb")
        try:
            child = subprocess.Popen(
                spec.command, env=self._environment(instance_id, spec, port, key),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives a crashed manager, like a container
            )
        except OSError as exc:
            raise RuntimeFailure(f"cannot start {spec.command[0]}: {exc}") from exc
        finally:
            log.close()
        self._children[instance_id] = child
        record = {"pid": child.pid, "pool": pool, "port": port, "created_at": time.time(),
                  "start_time": _start_time(child.pid), "key": key,  # the folder is private (statedir.py)
                  "labels": self.labels(pool, port, spec_hash)}
        self._record(instance_id).write_text(json.dumps(record))
        return self._instance(instance_id, record)

    def _environment(self, instance_id: str, spec: PoolSpec, port: int, key: str) -> dict[str, str]:
        """The spec's env, where to listen and its key; nothing of greenroom's own (its secrets)."""
        base = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8"}
        return base | self.server_env(instance_id, spec, port, key)

    def key_of(self, instance_id: str, spec: PoolSpec) -> str | None:
        try:
            return json.loads(self._record(instance_id).read_text()).get("key")
        except (OSError, ValueError):
            return None

    def inspect(self, instance_id: str) -> Instance | None:
        try:
            record = json.loads(self._record(instance_id).read_text())
        except (OSError, ValueError):
            return None
        return self._instance(instance_id, record)

    def destroy(self, instance_id: str) -> None:
        instance_record = self._record(instance_id)
        try:
            record = json.loads(instance_record.read_text())
        except (OSError, ValueError):
            record = None
        if record and self._alive(instance_id, record):
            self._stop(record["pid"])
        if child := self._children.pop(instance_id, None):
            child.wait(timeout=5)
        instance_record.unlink(missing_ok=True)
        (self.folder / f"{instance_id}.log").unlink(missing_ok=True)

    def list_managed(self) -> list[Instance]:
        found = (self.inspect(path.stem) for path in self.folder.glob("*.json"))
        return [instance for instance in found if instance is not None]

    def logs(self, instance_id: str, tail: int = 50) -> str:
        try:
            lines = (self.folder / f"{instance_id}.log").read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"<no logs: {exc}>"
        return "\n".join(lines[-tail:])

    def _record(self, instance_id: str) -> Path:
        return self.folder / f"{instance_id}.json"

    def _instance(self, instance_id: str, record: dict) -> Instance:
        return Instance(instance_id, record["pool"], record["port"], record["created_at"],
                        running=self._alive(instance_id, record),
                        spec_hash=record.get("labels", {}).get(SPEC_HASH, ""))

    def _alive(self, instance_id: str, record: dict) -> bool:
        if child := self._children.get(instance_id):
            child.poll()  # reap our own exited child so it does not linger as a zombie
        return record["start_time"] is not None and _start_time(record["pid"]) == record["start_time"]

    @staticmethod
    def _stop(pid: int) -> None:
        """SIGTERM the server's process group, then SIGKILL what is left after 3 s."""
        try:
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and _start_time(pid) is not None:
                time.sleep(0.02)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
