"""Prometheus and Grafana against greenroom.

The alert rules (deploy/prometheus/) pass `promtool check rules` and their unit tests
(`promtool test rules`), and the example configuration `promtool check config`: Debian's
prometheus package. The dashboard (deploy/grafana/greenroom.json) is its generator's
output. Then a real Prometheus scrapes a real API (with chat and pool workers and beat,
process runtime) every second, with the rules loaded: the figures arrive, every rule
evaluates, every series the rules and the dashboard read is scraped, every panel's query
runs; and with Redis stopped, Prometheus sees greenroom_redis_up 0 from an API that
still answers, and the Redis alert goes pending.
"""

import importlib.util
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.stack import RedisServer, free_port, stop_process_group
from conftest import wait_until
from pool_manager.settings import REFERENCE_SERVER
from stack import Stack

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "greenroom.rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "greenroom.json"
POOL = {"command": [sys.executable, str(REFERENCE_SERVER)], "runtime": "process", "target_idle": 2,
        "env": {"BOOT_SECONDS": "1"}}
SEEN_S = 30  # generous: a scrape and an evaluation every second


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: `bash scripts/setup.sh packages` (or `make test`) installs it")
    return path


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120, cwd=RULES_DIR)


def test_the_rules_pass_promtool_check():
    done = promtool("check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_pass_their_unit_tests():
    done = promtool("test", "rules", "greenroom.rules.test.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_the_example_configuration_is_valid():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_generator():
    spec = importlib.util.spec_from_file_location("greenroom_dashboard", REPO / "deploy" / "grafana" / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_dashboard_is_its_generators_output():
    assert DASHBOARD.read_text() == dashboard_generator().render(), \
        "regenerate: python deploy/grafana/dashboard.py > deploy/grafana/greenroom.json"


def panel_queries() -> list[tuple[str, str]]:
    import json

    return [(panel["title"], target["expr"]) for panel in json.loads(DASHBOARD.read_text())["panels"]
            for target in panel.get("targets", [])]


def rule_queries() -> list[str]:
    import yaml

    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def metric_names(exprs) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\bgreenroom_[a-z_]+\b", expr)}


def test_every_panel_and_rule_reads_greenroom_figures():
    """The check below can fail: it sees the names each query reads."""
    panels = panel_queries()
    assert len(panels) >= 20 and all(expr for _, expr in panels)
    assert "greenroom_claim_wait_seconds_bucket" in metric_names(expr for _, expr in panels)
    assert "greenroom_redis_up" in metric_names(rule_queries())


# ------------------------------------------------------------------ a real Prometheus

@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """Redis of this module's own: the last test stops it."""
    server = RedisServer(tmp_path_factory.mktemp("prom-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(redis_server, tmp_path_factory):
    running = Stack(redis_server.url, "prom", tmp_path_factory.mktemp("prom"), POOL)
    try:
        running.start("api", "chat", "pool", "beat")
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        if redis_server.process.poll() is not None:
            redis_server.start()  # back, so that the programs stop promptly
        running.stop()


class Prometheus:
    def __init__(self, folder: Path, target: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        config = folder / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s, scrape_timeout: 1s}\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n"
            f"  - {{job_name: greenroom, static_configs: [{{targets: ['{target}']}}]}}\n")
        argv = [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"]
        self.log = folder / "prometheus.log"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self.ready, 30, interval=0.2, message="prometheus")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params) -> dict:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """{the series' labels, but its name, job and instance: value}."""
        hidden = ("__name__", "job", "instance")
        return {",".join(f"{k}={v}" for k, v in sorted(r["metric"].items()) if k not in hidden): float(r["value"][1])
                for r in self.api("query", query=expr)["result"]}

    def stop(self) -> None:
        stop_process_group(self.process)


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), stack.api_url.removeprefix("http://"))
    yield server
    server.stop()
    print(server.log.read_text()[-4000:])


def test_prometheus_scrapes_the_api_and_every_rule_and_panel_works(prometheus):
    wait_until(lambda: prometheus.query('greenroom_containers{state="idle"}') == {"pool=chatbot,state=idle": 2.0},
               SEEN_S, message="the idle containers in Prometheus")
    assert prometheus.query('up{job="greenroom"}') == {"": 1.0}
    assert prometheus.query("greenroom_redis_up") == {"": 1.0}

    def rules_evaluated():
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        never = "0001-01-01T00:00:00Z"  # lastEvaluation before the first
        return rules if all(r["health"] == "ok" and r["lastEvaluation"] != never for r in rules) else None

    rules = wait_until(rules_evaluated, SEEN_S, message="every rule evaluated")
    assert len(rules) == len(rule_queries())
    assert {r["name"] for r in rules if r["type"] == "alerting" and r["state"] != "inactive"} == set()

    scraped = set(prometheus.api("label/__name__/values"))
    read = metric_names(rule_queries()) | metric_names(expr for _, expr in panel_queries())
    assert read <= scraped, f"read but not scraped: {sorted(read - scraped)}"
    for title, expr in panel_queries():  # as Grafana sends them, all pools chosen
        prometheus.api("query", query=expr.replace("$pool", ".+").replace("$__rate_interval", "1m"))
    assert prometheus.api("label/pool/values", **{"match[]": "greenroom_containers"}) == ["chatbot"]  # $pool


def test_a_redis_outage_is_told_apart_from_an_api_outage(prometheus, redis_server):
    began = time.time()
    redis_server.stop()
    try:
        wait_until(lambda: prometheus.query("greenroom_redis_up") == {"": 0.0},
                   SEEN_S, message="greenroom_redis_up 0")
        assert prometheus.query('up{job="greenroom"}') == {"": 1.0}  # the API still answers
        assert prometheus.query("greenroom_containers") == {}  # no figures without Redis
        alerts = wait_until(lambda: prometheus.query('ALERTS{alertname="GreenroomRedisUnreachable"}'), SEEN_S,
                            message="the Redis alert")
        assert list(alerts) == ["alertname=GreenroomRedisUnreachable,alertstate=pending,"
                                "severity=critical"]
        assert time.time() - began < 60  # pending, not yet firing (for: 1m)
    finally:
        redis_server.start()
