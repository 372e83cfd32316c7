"""deploy/docker-compose.yml: valid Compose, and consistent with itself, .env.example and the code.

The Compose Specification's JSON schema is the copy the ``check-jsonschema``
package ships (``vendor/compose-spec.json``); no test here needs Docker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from marketlake.cli.app import app
from marketlake.config import Settings
from marketlake.tools.refdocs import STACK_VARIABLES, env_name
from tests.deploy.files import (
    DEPLOY,
    ROOT,
    compose,
    compose_text,
    dockerfile,
    env_example,
    interpolate,
    schema_validator,
    variable_uses,
)

OUR_DOCKERFILE = "deploy/Dockerfile"
SCALABLE = ("api", "worker")
# Commands the compose file runs that other issues add to the CLI (serve: API issue, worker and
# stream: streaming issue, scheduler: providers issue, migrate: PostgreSQL issue). Remove a name
# once its command has landed, so the test checks it for real.
PENDING_COMMANDS = {"serve", "worker", "stream", "scheduler"}


def services() -> dict[str, dict[str, Any]]:
    result = compose()["services"]
    assert isinstance(result, dict)
    return result


def builds_our_image(service: dict[str, Any]) -> bool:
    build = service.get("build") or {}
    return isinstance(build, dict) and build.get("dockerfile") == OUR_DOCKERFILE


def filled_env() -> dict[str, str]:
    """.env.example with its secrets filled in, as a user's .env would be."""
    return {k: (v or f"secret-{k.lower()}") for k, v in env_example().items()}


def test_compose_file_matches_the_compose_specification_schema() -> None:
    schema_validator("compose-spec").validate(compose())


def test_interpolated_compose_file_matches_the_schema_too() -> None:
    data = yaml.safe_load(interpolate(compose_text(), filled_env()))
    schema_validator("compose-spec").validate(data)
    assert data["services"]["api"]["deploy"]["replicas"] == 1


def test_schema_rejects_a_misspelt_service_key() -> None:
    """The schema is strict enough to catch mistakes (so the tests above can fail)."""
    broken = yaml.safe_load(compose_text())
    broken["services"]["api"]["helthcheck"] = broken["services"]["api"].get("healthcheck")
    with pytest.raises(jsonschema.ValidationError, match="helthcheck"):
        schema_validator("compose-spec").validate(broken)


def test_every_dependency_waits_on_a_health_or_completion_condition() -> None:
    image_has_healthcheck = any(i.keyword == "HEALTHCHECK" for i in dockerfile())
    for name, service in services().items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services(), f"{name} depends on unknown service {target}"
            condition = rule["condition"]
            dependency = services()[target]
            if condition == "service_completed_successfully":
                assert dependency.get("restart") == "no", f"{target} must be one-shot"
                continue
            assert condition == "service_healthy", f"{name} → {target}: {condition}"
            check = dependency.get("healthcheck")
            if check is None:
                assert builds_our_image(dependency), target
                assert image_has_healthcheck, target
            else:
                assert not check.get("disable"), f"{name} waits on {target} which has no check"
                assert check["test"], target


def test_dependencies_have_no_cycle() -> None:
    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " → ".join((*path, name))
        for target in services()[name].get("depends_on") or {}:
            visit(target, (*path, name))

    for name in services():
        visit(name, ())


def test_long_running_services_all_have_a_healthcheck() -> None:
    for name, service in services().items():
        if service.get("restart") == "no":
            continue
        check = service.get("healthcheck")
        assert check or builds_our_image(service), f"{name} has no healthcheck"
        assert not (check or {}).get("disable"), name


def test_every_variable_is_documented_in_env_example() -> None:
    documented = env_example()
    used = {use.name for use in variable_uses(compose_text())}
    missing = sorted(used - set(documented))
    assert not missing, f"add to marketlake.tools.refdocs.STACK_VARIABLES and regenerate: {missing}"


def test_compose_defaults_equal_the_documented_defaults() -> None:
    documented = env_example()
    for use in variable_uses(compose_text()):
        if use.op in (":-", "-"):
            assert use.arg == documented[use.name], use.name


def test_required_variables_are_exactly_the_empty_secrets() -> None:
    required = {u.name for u in variable_uses(compose_text()) if u.op in (":?", "?")}
    secrets = {v.name for v in STACK_VARIABLES if v.secret}
    assert required == secrets
    assert all(env_example()[name] == "" for name in secrets)


def test_missing_password_stops_compose_with_a_message_saying_what_to_set() -> None:
    env = filled_env()
    env["POSTGRES_PASSWORD"] = ""
    with pytest.raises(KeyError, match=r"set POSTGRES_PASSWORD in \.env"):
        interpolate(compose_text(), env)


def test_marketlake_environment_names_real_settings() -> None:
    fields = {env_name(f) for f in Settings.model_fields}
    for name, service in services().items():
        for key in service.get("environment") or {}:
            if key.startswith("MARKETLAKE_") and not key.startswith("MARKETLAKE_DB_"):
                assert key in fields, f"{name}: {key} is not a setting"


def test_store_and_bus_point_at_the_stack_services() -> None:
    env = services()["api"]["environment"]
    store = interpolate(env["MARKETLAKE_STORE"], filled_env())
    assert store == "postgresql://marketlake:secret-postgres_password@postgres:5432/marketlake"
    assert env["MARKETLAKE_BUS"] == "redis://redis:6379/0"


def test_scalable_services_have_no_fixed_name_or_host_port() -> None:
    for name in SCALABLE:
        service = services()[name]
        assert "container_name" not in service
        assert "ports" not in service
        assert "replicas" in service["deploy"]


def test_only_the_proxy_is_published_beyond_localhost() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            if name != "proxy":
                assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_third_party_images_are_pinned_to_exact_versions() -> None:
    for name, service in services().items():
        if builds_our_image(service):
            continue
        image = service["image"]
        assert "@sha256:" in image or re.search(r":v?\d+\.\d+\.\d+", image), f"{name}: {image}"
        assert "latest" not in image


def test_bind_mounts_point_at_files_in_the_repository() -> None:
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                # ../config holds the user's YAML (alert rules, schedule); it may not exist yet
                assert path.exists() or path == ROOT / "config", f"{name}: {source}"


def test_named_volumes_are_declared_and_used() -> None:
    declared = set(compose()["volumes"])
    used = set()
    for service in services().values():
        used |= {v.split(":")[0] for v in service.get("volumes", []) if not v.startswith(".")}
    assert used == declared


def _registered_commands() -> set[str]:
    import typer.main

    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_services_run_marketlake_commands_that_exist_or_are_planned() -> None:
    registered = _registered_commands()
    for name, service in services().items():
        if not builds_our_image(service):
            continue
        words = service.get("command") or ["serve"]
        if service.get("entrypoint"):
            words = re.findall(r"marketlake (\w+)", " ".join(service["entrypoint"]))
        assert words[0] in registered | PENDING_COMMANDS, f"{name}: {words[0]}"
        if "test" in (service.get("healthcheck") or {}):
            probe = service["healthcheck"]["test"]
            assert probe[1:3] == ["marketlake", "doctor"]
            assert "doctor" in registered


def test_api_port_agrees_with_settings_dockerfile_and_proxy() -> None:
    api = services()["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert port == api["environment"]["MARKETLAKE_API_PORT"] == "8000"
    assert Settings.model_fields["api_port"].default == 8000
    assert "EXPOSE 8000" in {f"{i.keyword} {i.argument}" for i in dockerfile()}
    assert "port 8000" in (DEPLOY / "caddy" / "Caddyfile").read_text()
    assert "name api" in (DEPLOY / "caddy" / "Caddyfile").read_text()


def test_grafana_reader_init_script_is_mounted_and_gets_its_password() -> None:
    postgres = services()["postgres"]
    script_mount = (
        "./postgres/initdb/10-grafana-reader.sh:/docker-entrypoint-initdb.d/10-grafana-reader.sh:ro"
    )
    assert script_mount in postgres["volumes"]
    # mounting the whole directory would hide the image's own TimescaleDB init scripts
    assert not any(v.endswith(":/docker-entrypoint-initdb.d:ro") for v in postgres["volumes"])
    script = (DEPLOY / "postgres" / "initdb" / "10-grafana-reader.sh").read_text()
    assert "GRAFANA_DB_PASSWORD" in script
    assert "GRAFANA_DB_PASSWORD" in postgres["environment"]
    assert Path(DEPLOY / "postgres" / "initdb" / "10-grafana-reader.sh").stat().st_mode & 0o111
