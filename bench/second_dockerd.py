"""A second Docker daemon beside the machine's own, as a second "host" for the engine
tests and the bench's two-engine burst (CONVENTIONS.md): its own socket, data root, exec root and pidfile, no bridge, no
iptables, host networking; the reference image loaded from the first daemon.

It runs under the name `dockerd-gr` (a symlink to dockerd), so `pgrep -x dockerd` still
finds exactly one daemon: the machine's, which tests/test_faults_docker.py restarts.
Needs root.
Stopping it kills its containers first (a host lost), and `remove()` leaves no trace.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from .stack import IMAGE, wait_until


class SecondDockerd:
    def __init__(self, name: str):
        self.run_dir = Path(f"/run/{name}")  # a short path: a unix socket's is at most 107 bytes
        self.data_root = Path(f"/var/lib/{name}")  # on disk, where overlay2 works (not on overlayfs /tmp)
        self.socket = self.run_dir / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None
        self.client: docker.DockerClient | None = None

    @staticmethod
    def refusal() -> str | None:
        """Why no second daemon can be started here, or None."""
        if os.geteuid() != 0:
            return "a second dockerd needs root"
        if not shutil.which("dockerd"):
            return "dockerd is not installed (scripts/setup.sh installs docker.io)"
        return None

    def argv(self) -> list[str]:
        return [str(self.run_dir / "dockerd-gr"), "--host", self.url, "--data-root", str(self.data_root),
                "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.run_dir / "dockerd.pid"),
                "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip-forward=false"]

    def start(self, timeout: float = 90) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        link = self.run_dir / "dockerd-gr"
        if not link.exists():
            link.symlink_to(shutil.which("dockerd"))
        with open(self.run_dir / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self.answers, timeout, interval=0.2, message="the second dockerd to answer")
        except BaseException:
            self.stop()
            raise

    def answers(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the second dockerd exited; see {self.run_dir / 'dockerd.log'}")
        try:
            if self.client is None:  # docker-py asks the engine's version as it is built
                self.client = docker.DockerClient(base_url=self.url, timeout=60)
            return bool(self.client.ping())
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return False

    def load_image(self, source: docker.DockerClient, image: str = IMAGE) -> None:
        """The image, as the first daemon has it (no registry here)."""
        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        self.client.images.load(b"".join(source.images.get(image).save(named=True)))

    def containers(self, owner: str) -> list[str]:
        rows = self.client.api.containers(all=True, filters={"label": f"greenroom.owner={owner}"})
        return sorted(row["Names"][0].lstrip("/") for row in rows)

    def lose(self) -> None:
        """The host lost at once: the daemon killed (it reports nothing more), then its
        containers and its containerd. start() brings it back as after a crash."""
        pids = [self.client.api.inspect_container(row["Id"])["State"]["Pid"]
                for row in self.client.api.containers(filters={"status": "running"})]
        self.process.kill()
        self.process.wait(30)
        self.process = None
        for pid in [*filter(None, pids), *self._containerd()]:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 30, message="containers to die")
        self.client.close()
        self.client = None

    def _containerd(self) -> list[int]:
        """The containerd this daemon started (under its exec root)."""
        mine = str(self.run_dir / "exec").encode()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and mine in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
        return found

    def stop(self, timeout: float = 60) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self.client:
            self.client.close()
            self.client = None

    def remove(self) -> None:
        """Stop it (its containers with it) and remove every file it had."""
        if self.process and self.answers():
            for row in self.client.api.containers(all=True):
                self.client.api.remove_container(row["Id"], force=True)
        self.stop()
        time.sleep(0.5)
        for mount in reversed(Path("/proc/mounts").read_text().splitlines()):  # what it left mounted
            point = mount.split()[1]
            if point.startswith((str(self.run_dir), str(self.data_root))):
                subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
