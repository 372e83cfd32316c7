"""Generated references (.env.example, configuration, CLI, OpenAPI) stay in step with the code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from marketlake.config import Settings
from marketlake.tools import refdocs as docs
from tests.deploy.files import ROOT, env_example, env_example_active


def test_generated_references_in_the_repository_are_up_to_date() -> None:
    stale = docs.outdated(ROOT)
    assert not stale, f"run `python -m marketlake.tools.refdocs` to regenerate {stale}"


def test_check_names_a_stale_file_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert docs.main(["--root", str(tmp_path)]) == 0
    assert "wrote docs/reference/cli.md" in capsys.readouterr().out
    assert docs.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "docs" / "reference" / "configuration.md").write_text("old\n")
    assert docs.main(["--check", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        "docs/reference/configuration.md is out of date: run `python -m marketlake.tools.refdocs`\n"
    )


def test_write_rewrites_only_what_changed(tmp_path: Path) -> None:
    assert len(docs.write(tmp_path)) == len(docs.generate())
    assert docs.write(tmp_path) == []


def test_module_runs_as_a_script(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m marketlake.tools.refdocs --check` exits 0 on the repository."""
    import runpy
    import warnings

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["marketlake.tools.refdocs", "--check"])
    with warnings.catch_warnings():
        # runpy warns that the module is already imported; that is expected here
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_module("marketlake.tools.refdocs", run_name="__main__")
    assert exit_info.value.code == 0


def test_env_example_lists_every_setting_with_its_default_and_no_secret() -> None:
    values = env_example()
    for name, info in Settings.model_fields.items():
        var = docs.env_name(name)
        assert var in values, var
        if "Secret" in repr(info.annotation):
            assert values[var] == ""
    assert values["MARKETLAKE_STORE"] == "duckdb:///./data/marketlake.duckdb"
    assert values["MARKETLAKE_API_CORS_ORIGINS"] == "[]"
    assert values["MARKETLAKE_LOG_JSON"] == "false"


def test_copied_env_example_sets_only_the_empty_secrets() -> None:
    """Defaults are commented out, so a copied .env overrides nothing until edited."""
    active = env_example_active()
    secrets = {
        docs.env_name(n) for n, f in Settings.model_fields.items() if "Secret" in repr(f.annotation)
    }
    secrets |= {v.name for v in docs.STACK_VARIABLES if v.secret}
    assert active == dict.fromkeys(secrets, "")


def test_env_example_values_load_back_into_the_default_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Copying .env.example to .env changes nothing: every value means the default."""
    for var, value in env_example().items():
        if var.startswith("MARKETLAKE_"):
            monkeypatch.setenv(var, value)
    assert Settings(_env_file=None) == Settings.model_construct(
        **{n: f.get_default(call_default_factory=True) for n, f in Settings.model_fields.items()}
    )


def test_env_values_are_written_as_pydantic_reads_them() -> None:
    assert docs.env_value(None) == ""
    assert docs.env_value(True) == "true"
    assert docs.env_value(Path("data")) == "./data"
    assert docs.env_value(Path("/srv/data")) == "/srv/data"
    assert docs.env_value(["a", "b"]) == '["a", "b"]'
    assert docs.env_value(2.5) == "2.5"


def test_configuration_reference_marks_secrets_and_documents_stack_variables() -> None:
    text = docs.configuration_reference()
    assert "| `MARKETLAKE_ALPACA_SECRET_KEY` | `SecretStr \\| None` | *(secret)* |" in text
    for variable in docs.STACK_VARIABLES:
        assert f"| `{variable.name}` |" in text


def test_cli_reference_documents_every_command() -> None:
    import typer.main

    from marketlake.cli.app import app

    text = docs.cli_reference()
    group = typer.main.get_command(app)
    for name in group.commands:  # type: ignore[attr-defined]
        assert f"## `marketlake {name}`" in text


def test_api_references_list_every_route_of_the_openapi_document() -> None:
    document = docs.openapi_document()
    index = docs.api_reference()
    assert document is not None
    assert index is not None
    paths = json.loads(document)["paths"]
    assert "/api/v1/health" in paths
    for path, operations in paths.items():
        for method in operations:
            assert f"| `{method.upper()}` | `{path}` |" in index


def test_api_references_are_skipped_while_there_is_no_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "marketlake.api" else real_find_spec(name, *args)  # type: ignore[arg-type]

    docs._openapi.cache_clear()
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    try:
        assert docs.openapi_document() is None
        assert docs.api_reference() is None
        assert "docs/reference/openapi.json" not in docs.generate()
    finally:
        docs._openapi.cache_clear()


def test_architecture_diagram_shows_every_service_of_the_stack() -> None:
    from tests.deploy.files import compose

    text = (ROOT / "docs" / "architecture.md").read_text()
    diagrams = text.split("```mermaid")[1:]
    assert len(diagrams) == 2
    stack = diagrams[1].split("```")[0]
    for service in compose()["services"]:
        assert f"{service}[" in stack or f"{service}1[" in stack, service


def test_docs_link_only_to_files_that_exist() -> None:
    import re

    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.(?:md|json))\)", page.read_text()):
            if target.endswith("openapi.json"):
                continue  # exported once the API exists
            assert (page.parent / target).is_file(), f"{page.name} → {target}"
