"""`greenroom chat`: talk to a pool through the HTTP API.

Each message is a streamed job (POST /v1/jobs with "stream": true) followed on its events
(GET /v1/jobs/<id>/events): the spinner shows its state as it changes (queued, waiting for
a container and its place in line, running) and the reply's words print as they arrive.
Where the events stream is refused (429 too_many_waits) or breaks off, the job is
long-polled to its end instead.
"""

import itertools
import json
import sys
import threading

import click
import httpx

from pool_manager.schemas import FINAL

from .secretfile import secret_from_home
from .sse import events

DEFAULT_API_URL = "http://127.0.0.1:8080"
POLL_WAIT_S = 30  # each long poll of GET /v1/jobs/<id>?wait=N
SESSION_GONE = ("session_closed", "container_lost", "container_timeout")


class Cancelled(Exception):
    """Ctrl-C while a job was on its way; the message says what became of the job."""

    def __init__(self, job_id: str, message: str):
        super().__init__(message)
        self.job_id = job_id


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

    def ask(self, model: str, text: str, session_id: str | None, turn: "Turn") -> dict:
        """Submit one user message, follow it to its end; its final record."""
        body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": True}
        job = self.call("POST", "/v1/jobs", json=body | ({"session_id": session_id} if session_id else {}))
        if session_id and job.get("new_session"):
            turn.note(f"(no open session {session_id!r}: this message starts a new session of that name)")
        try:
            return self._follow(job, turn) or self._poll(job, turn)
        except KeyboardInterrupt:
            raise Cancelled(job["id"], self.cancel(job["id"])) from None

    def _follow(self, job: dict, turn: "Turn") -> dict | None:
        """The job's events as they happen; None if the stream is refused or ends early."""
        turn.state(job)
        try:
            with self.http.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=httpx.Timeout(15, read=None)) as r:
                if r.status_code != 200:
                    return None  # too_many_waits (or an older API): long polling does it
                for event in events(r.iter_lines()):
                    data = json.loads(event.data)
                    if event.name in FINAL:
                        return data
                    if event.name == "chunk":
                        if text := "".join((c.get("delta") or {}).get("content") or "" for c in data["choices"]):
                            turn.chunk(text)
                    elif event.name == "restart":
                        turn.restart()
                    else:
                        turn.state(data)
        except httpx.TransportError:
            pass
        return None

    def _poll(self, job: dict, turn: "Turn") -> dict:
        while job["status"] not in FINAL:
            turn.state(job)
            job = self.call("GET", f"/v1/jobs/{job['id']}", params={"wait": POLL_WAIT_S})
        return job

    def cancel(self, job_id: str) -> str:
        """DELETE the job; what became of it, in words."""
        try:
            response = self.http.delete(f"/v1/jobs/{job_id}", timeout=5)
        except httpx.HTTPError as exc:
            return f"job {job_id} may go on: cancelling it failed ({exc})"
        if response.status_code == 200:
            return f"job {job_id} cancelled"
        if response.status_code == 409:
            return f"job {job_id} was already running: it ends on the server, its reply unread"
        return f"job {job_id} may go on: cancelling it answered {response.status_code} {_error_text(response)}"

    def close_session(self, session_id: str) -> None:
        """End a session; one that never started (its first job was cancelled) is fine."""
        try:
            self.http.delete(f"/v1/sessions/{session_id}", timeout=10)
        except httpx.HTTPError:
            pass


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _progress(job: dict) -> str:
    if job["status"] == "waiting_for_container" and job.get("position"):
        return f"waiting for a container, {ordinal(int(job['position']))} in line"
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
        self.stop()

    def stop(self) -> None:
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


class Turn:
    """What one message shows: its job's state on the spinner while it waits, then the
    reply on stdout, word by word as it arrives."""

    def __init__(self, spinner: Spinner, prefix: str = ""):
        self.spinner, self.prefix = spinner, prefix
        self.printed = None  # the reply's text so far, once it began

    def state(self, job: dict) -> None:
        self.spinner.label = _progress(job)

    def note(self, text: str) -> None:
        click.echo(("\r\x1b[K" if self.spinner.stream.isatty() else "") + text, err=True)

    def chunk(self, text: str) -> None:
        if self.printed is None:
            self.spinner.stop()
            self.printed = ""
            click.echo(self.prefix, nl=False)
        click.echo(text, nl=False)
        sys.stdout.flush()
        self.printed += text

    def restart(self) -> None:
        """A new worker writes the reply again, from its start."""
        if self.printed is not None:
            click.echo()
            self.note("(the worker writing this reply was lost; another starts it over)")
            self.printed = None

    def finish(self, job: dict) -> None:
        """The rest of the reply (all of it, if none streamed), or a ClickException."""
        self.spinner.stop()
        if job["status"] != "succeeded":
            if self.printed is not None:
                click.echo()
            _reply(job)  # raises, saying why
        text = _reply(job)
        if self.printed is not None and text.startswith(self.printed):
            click.echo(text[len(self.printed):])
        else:
            click.echo(("\n" if self.printed else "") + self.prefix + text)


def _reply(job: dict) -> str:
    """The assistant's text, or a ClickException saying why there is none."""
    if job["status"] == "succeeded":
        return job["result"]["choices"][0]["message"]["content"]
    error = job.get("error") or {}
    detail = ": ".join(str(error[k]) for k in ("code", "message") if error.get(k))
    raise click.ClickException(f"job {job['id']} {job['status']}" + (f": {detail}" if detail else ""))


def _token(token: str | None) -> str:
    """--token / GREENROOM_TOKEN, else the admin token `greenroom up` saved in ./.greenroom."""
    if token:
        return token
    found, looked = secret_from_home("GREENROOM_TOKEN")
    if not found:
        raise click.ClickException(f"no token: pass --token or set GREENROOM_TOKEN, or run from the folder "
                                   f"`greenroom up` ran in (looked for GREENROOM_TOKEN in {looked})")
    return found


@click.command()
@click.argument("message", required=False)
@click.option("--model", default="chatbot", show_default=True, help="The pool to talk to.")
@click.option("--session", "session_id", help="Continue this session (default: a new one).")
@click.option("--keep", is_flag=True, help="MESSAGE alone: keep the new session open to continue it (default: "
                                           "closed after the reply, freeing its container).")
@click.option("--api-url", envvar="GREENROOM_API_URL", default=DEFAULT_API_URL, show_default=True)
@click.option("--token", envvar="GREENROOM_TOKEN",
              help="Bearer token [env GREENROOM_TOKEN; default: the one `up` saved in .greenroom/].")
def chat(message: str | None, model: str, session_id: str | None, keep: bool, api_url: str,
         token: str | None) -> None:
    """Send MESSAGE and print the reply; without MESSAGE, converse until /quit.

    A MESSAGE alone starts a session and closes it after the reply, unless --keep (then it
    prints how to continue). A session named with --session stays open; if no session of
    that name was open, a warning says a new one started."""
    client = ApiClient(api_url, _token(token))
    if message is None:
        _converse(client, model, session_id)
        return
    job = None
    try:
        with Spinner() as spinner:
            turn = Turn(spinner)
            job = client.ask(model, message, session_id, turn)
            turn.finish(job)
    except Cancelled as exc:
        click.echo(f"greenroom: {exc}", err=True)
        if not session_id:
            client.close_session(exc.job_id)  # a new session is named after its first job
        sys.exit(130)
    finally:
        if job and not session_id:
            _end_one_shot(client, job, keep)


def _end_one_shot(client: ApiClient, job: dict, keep: bool) -> None:
    """The session a single message started: closed, or kept and how to continue it."""
    if keep and job["status"] == "succeeded":
        click.echo(f"(session {job['session_id']} kept: continue with --session {job['session_id']})", err=True)
    else:
        client.close_session(job["session_id"])


def _converse(client: ApiClient, model: str, session_id: str | None) -> None:
    """One session, one line at a time; closes the session it started when it ends. Ctrl-C
    while a reply is on its way cancels that message; at the prompt it ends the talk."""
    started = None
    click.echo(f"Talking to {model!r}; /quit (or Ctrl-D) ends the conversation.", err=True)
    try:
        while (line := _read_line()) is not None:
            job = _turn(client, model, line, session_id)
            if job is None:
                continue
            if session_id is None and job.get("session_id"):
                session_id = started = job["session_id"]  # a session of our own: closed at the end
            if job["status"] != "succeeded" and (job.get("error") or {}).get("code") in SESSION_GONE:
                click.echo("(the session ended; the next message starts a new one)", err=True)
                session_id = started = None
    except KeyboardInterrupt:
        click.echo("", err=True)
    finally:
        if started:
            client.close_session(started)


def _turn(client: ApiClient, model: str, line: str, session_id: str | None) -> dict | None:
    """One message and its reply (the job; None if it was never made or Ctrl-C cancelled it)."""
    job = None
    try:
        with Spinner() as spinner:
            turn = Turn(spinner, prefix=f"{model}> ")
            job = client.ask(model, line, session_id, turn)
            turn.finish(job)
    except Cancelled as exc:
        click.echo(f"({exc})", err=True)
        return None
    except click.ClickException as exc:
        click.echo(f"error: {exc.message}", err=True)
    return job


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
