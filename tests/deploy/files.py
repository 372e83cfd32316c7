"""Readers of the deployment files for the tests: compose, .env.example, Dockerfile, schemas."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; $$ escapes a dollar
_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


@dataclass(frozen=True)
class VariableUse:
    """One ``${...}`` in the compose file."""

    name: str
    op: str | None
    arg: str | None


def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@cache
def compose() -> dict[str, Any]:
    """The compose file as YAML data, anchors and merge keys resolved, not interpolated."""
    data = yaml.safe_load(compose_text())
    assert isinstance(data, dict)
    return data


def variable_uses(text: str) -> list[VariableUse]:
    """Every variable reference of a compose file's text (``$$`` escapes excluded)."""
    uses = []
    for match in _REFERENCE.finditer(text):
        if match.group(0) == "$$":
            continue
        name = match.group("name") or match.group("bare")
        uses.append(VariableUse(name, match.group("op"), match.group("arg")))
    return uses


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ``text`` with ``env`` (raises on a missing required value)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        if op in (":-", "-"):
            unset = value is None or (op == ":-" and value == "")
            return arg if unset else str(value)
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return value or ""

    return _REFERENCE.sub(replace, text)


_ENV_LINE = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$")


@cache
def env_example() -> dict[str, str]:
    """Variable → value of ``.env.example``, commented defaults included."""
    values = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        match = _ENV_LINE.match(line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


@cache
def env_example_active() -> dict[str, str]:
    """The variables ``.env.example`` sets when copied to ``.env`` (uncommented lines)."""
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


@cache
def vendored_schema(name: str) -> dict[str, Any]:
    """A JSON schema shipped by the check-jsonschema package (compose-spec, github-workflows)."""
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath(f"{name}.json").read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


@cache
def schema_validator(name: str) -> Any:
    """A ready validator of a vendored schema (building one is the slow part)."""
    import jsonschema

    schema = vendored_schema(name)
    return jsonschema.validators.validator_for(schema)(schema)


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction as Docker's parser reads it."""

    keyword: str
    words: tuple[str, ...]
    flags: tuple[str, ...]
    stage: int

    @property
    def argument(self) -> str:
        return " ".join(self.words)


def dockerfile() -> list[Instruction]:
    """The instructions of deploy/Dockerfile; ``stage`` counts FROM lines (0 before the first).

    Parsed by the ``dockerfile`` package, which wraps the parser of Docker's BuildKit, so a
    syntax error here is one Docker would report.
    """
    import dockerfile as parser

    instructions, stage = [], 0
    for command in parser.parse_file(str(DOCKERFILE)):
        keyword = command.cmd.upper()
        stage += keyword == "FROM"
        instructions.append(Instruction(keyword, tuple(command.value), tuple(command.flags), stage))
    return instructions
