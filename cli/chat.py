"""`greenroom chat`: talk to a pool through the HTTP API."""

import itertools
import os
import sys
import threading

import click
import httpx

from pool_manager.schemas import FINAL

from .secretfile import HOME, SECRETS_FILE, read_env_file

DEFAULT_API_URL = "http://127.0.0.1:8080"
POLL_WAIT_S = 30  # each long poll of GET /v1/jobs/<id>?wait=N
SESSION_GONE = ("session_closed", "container_lost", "container_timeout")


class ApiClient:
    """The few calls `greenroom chat` makes; API errors become ClickExceptions."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(15, read=POLL_WAIT_S + 15))

    def call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise click.ClickException(f"cannot reach the API at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise click.ClickException(f"{method} {path}: {response.status_code} {_error_text(response)}")
        return response.json() if response.content else {}

    def ask(self, model: str, text: str, session_id: str | None, spinner: "Spinner") -> dict:
        """Submit one user message and long-poll the job to its end."""
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        if session_id:
            body["session_id"] = session_id
        job = self.call("POST", "/v1/jobs", json=body)
        try:
            while job["status"] not in FINAL:
                spinner.label = _progress(job)
                job = self.call("GET", f"/v1/jobs/{job['id']}", params={"wait": POLL_WAIT_S})
        except KeyboardInterrupt:
            self.cancel(job["id"])
            raise
        return job

    def cancel(self, job_id: str) -> None:
        try:
            self.http.delete(f"/v1/jobs/{job_id}", timeout=5)
        except httpx.HTTPError:
            pass

    def close_session(self, session_id: str) -> None:
        self.call("DELETE", f"/v1/sessions/{session_id}")


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _progress(job: dict) -> str:
    if job["status"] == "waiting_for_container" and "position" in job:
        return f"waiting for a container (position {job['position']})"
    return job["status"].replace("_", " ")


class Spinner:
    """A one-line spinner with a label on stderr, only when stderr is a terminal."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.label = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def __enter__(self) -> "Spinner":
        if self.stream.isatty():
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _spin(self) -> None:
        for frame in itertools.cycle("|/-\\"):
            self.stream.write(f"\r{frame} {self.label}\x1b[K")
            self.stream.flush()
            if self._stop.wait(0.1):
                break
        self.stream.write("\r\x1b[K")
        self.stream.flush()


def _reply(job: dict) -> str:
    """The assistant's text, or a ClickException saying why there is none."""
    if job["status"] == "succeeded":
        return job["result"]["choices"][0]["message"]["content"]
    error = job.get("error") or {}
    detail = ": ".join(str(error[k]) for k in ("code", "message") if error.get(k))
    raise click.ClickException(f"job {job['id']} {job['status']}" + (f": {detail}" if detail else ""))


def _default_token() -> str | None:
    """GREENROOM_TOKEN, else the admin token `greenroom up` saved in this directory."""
    return os.environ.get("GREENROOM_TOKEN") or read_env_file(HOME / SECRETS_FILE).get("GREENROOM_TOKEN")


@click.command()
@click.argument("message", required=False)
@click.option("--model", default="chatbot", show_default=True, help="The pool to talk to.")
@click.option("--session", "session_id", help="Continue this session (default: a new one).")
@click.option("--api-url", envvar="GREENROOM_API_URL", default=DEFAULT_API_URL, show_default=True)
@click.option("--token", envvar="GREENROOM_TOKEN",
              help="Bearer token [env GREENROOM_TOKEN; default: the one `up` saved in .greenroom/].")
def chat(message: str | None, model: str, session_id: str | None, api_url: str, token: str | None) -> None:
    """Send MESSAGE and print the reply; without MESSAGE, converse until /quit."""
    token = token or _default_token()
    if not token:
        raise click.ClickException("no token: pass --token or set GREENROOM_TOKEN")
    client = ApiClient(api_url, token)
    if message is None:
        _converse(client, model, session_id)
        return
    with Spinner() as spinner:
        job = client.ask(model, message, session_id, spinner)
    click.echo(_reply(job))
    if not session_id and job.get("session_id"):
        click.echo(f"(session {job['session_id']}: continue with --session {job['session_id']})", err=True)


def _converse(client: ApiClient, model: str, session_id: str | None) -> None:
    """One session, one line at a time; closes the session it started when it ends."""
    started = None
    click.echo(f"Talking to {model!r}; /quit (or Ctrl-D) ends the conversation.", err=True)
    try:
        while (line := _read_line()) is not None:
            with Spinner() as spinner:
                job = client.ask(model, line, session_id, spinner)
            if session_id is None and job.get("session_id"):
                session_id = started = job["session_id"]  # a session of our own: closed at the end
            _show_turn(model, job)
            if job["status"] != "succeeded" and (job.get("error") or {}).get("code") in SESSION_GONE:
                click.echo("(the session ended; the next message starts a new one)", err=True)
                session_id = started = None
    except KeyboardInterrupt:
        click.echo("", err=True)
    finally:
        if started:
            client.close_session(started)


def _read_line() -> str | None:
    """The next non-empty line, or None at /quit or end of input."""
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return None
        if line == "/quit":
            return None
        if line:
            return line


def _show_turn(model: str, job: dict) -> None:
    try:
        click.echo(f"{model}> {_reply(job)}")
    except click.ClickException as exc:
        click.echo(f"error: {exc.message}", err=True)
