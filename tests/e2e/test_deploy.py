"""The monitoring and deployment files under deploy/, checked with the tools an
operator runs them with:

- deploy/prometheus/kvcache-rules.yml: `promtool check rules`, and its unit tests
  (kvcache-rules.test.yml) with `promtool test rules`;
- deploy/grafana/kvcache.json: every expression parses as PromQL (promtool, on a
  throw-away rules file) and, like every rule, names only metrics and labels that
  a real server's /metrics exports;
- deploy/cluster/compose.yaml: `docker-compose config` (offline; no engine needed).

promtool comes with Debian's `prometheus`, docker-compose with `docker-compose`
(tools/install-deps.sh test installs both); a test skips, saying so, without them.
"""

import json
import re
import shutil
import subprocess

import pytest
import requests
import yaml

from helpers import REPO

RULES = REPO / "deploy" / "prometheus" / "kvcache-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "kvcache-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "kvcache.json"
COMPOSE = REPO / "deploy" / "cluster" / "compose.yaml"
PROMTOOL = shutil.which("promtool")
DOCKER_COMPOSE = shutil.which("docker-compose")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; tools/install-deps.sh test)")
TOKEN = "deploy-test-token-0123456789"
# Labels Prometheus adds at scrape time, not the server.
TARGET_LABELS = {"job", "instance"}


def run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def rule_expressions():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = {f"{panel['title']} / {target['refId']}": target["expr"]
             for panel in dashboard["panels"] for target in panel["targets"]}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs[f"variable {variable['name']}"] = variable["definition"]
    return exprs


@needs_promtool
def test_promtool_checks_the_rules():
    result = run([PROMTOOL, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass():
    result = run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == set(rule_expressions()), f"alerts without a unit test: {set(rule_expressions()) - tested}"


@needs_promtool
def test_dashboard_expressions_parse(tmp_path):
    # Grafana's variables become constants so that promtool can parse the rest.
    exprs = {name: e.replace("$__rate_interval", "5m").replace("$instance", ".*")
             for name, e in dashboard_expressions().items() if not e.startswith("label_values(")}
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": e} for i, e in enumerate(exprs.values())]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([PROMTOOL, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Metric name -> label names, from a server with every optional family on
    (snapshots, tokens) after requests that touch every counter family."""
    from helpers import launch
    tmp = tmp_path_factory.mktemp("deploy")
    (tmp / "tokens").write_text(TOKEN + "\n")
    srv = launch(tmp, ["--snapshot-path", str(tmp / "s.snap"), "--auth-token-file", str(tmp / "tokens")])
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with requests.Session() as s:
            s.post(srv.url + "/put", json={"key": "k", "value": "v"}, headers=auth, timeout=5)
            s.get(srv.url + "/get?key=k", headers=auth, timeout=5)
            s.get(srv.url + "/get?key=absent", headers=auth, timeout=5)
            s.get(srv.url + "/get?key=k", timeout=5)  # a 401
            text = s.get(srv.url + "/metrics", headers=auth, timeout=5).text
    finally:
        srv.stop()
    metrics = {}
    for line in text.splitlines():
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        if match and not line.startswith("#"):
            labels = set(re.findall(r'(\w+)="', match.group(2) or ""))
            metrics.setdefault(match.group(1), set()).update(labels)
    return metrics


def check_names(exprs, exported):
    problems = []
    for name, expr in exprs.items():
        used = re.findall(r"\b((?:kvcache|process)_[a-z0-9_]+)(?:\{([^}]*)\})?", expr)
        if not used and "up{" not in expr:
            problems.append(f"{name}: names no kvcache metric: {expr}")
        for metric, selector in used:
            if metric not in exported:
                problems.append(f"{name}: {metric} is not in /metrics")
                continue
            for label in set(re.findall(r"(\w+)\s*=~?", selector)) - TARGET_LABELS - exported[metric]:
                problems.append(f"{name}: {metric} has no label {label}")
        all_labels = set().union(*exported.values()) | TARGET_LABELS
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in {g.strip() for g in group.split(",") if g.strip()} - all_labels:
                problems.append(f"{name}: no metric has the label {label} it groups by")
    return problems


def test_every_dashboard_expression_names_exported_metrics(exported):
    exprs = dashboard_expressions()
    assert len(exprs) >= 12
    problems = check_names(exprs, exported)
    assert not problems, "\n".join(problems)
    # the families the dashboard is for, each on some panel
    shown = set(re.findall(r"\b(kvcache_[a-z0-9_]+)", " ".join(exprs.values())))
    for family in ("kvcache_requests_total", "kvcache_request_duration_seconds_bucket", "kvcache_hits_total",
                   "kvcache_memory_used_bytes", "kvcache_store_budget_bytes", "kvcache_memory_limit_bytes",
                   "kvcache_evictions_total", "kvcache_expirations_total", "kvcache_connections_open",
                   "kvcache_connection_buffer_bytes", "kvcache_connection_buffer_budget_bytes",
                   "kvcache_snapshot_last_success_timestamp_seconds"):
        assert family in shown, f"no panel shows {family}"


def test_every_alert_names_exported_metrics(exported):
    problems = check_names(rule_expressions(), exported)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(DOCKER_COMPOSE is None,
                    reason="docker-compose not installed (Debian package docker-compose; tools/install-deps.sh test)")
def test_compose_file_validates_offline():
    result = run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config", "--quiet"])
    assert result.returncode == 0, result.stdout + result.stderr
    services = yaml.safe_load(run([DOCKER_COMPOSE, "-f", str(COMPOSE), "config"]).stdout)["services"]
    assert {"node1", "node2", "node3", "haproxy"} <= set(services)
