"""Reading docker-compose.yml and .env.example as Docker Compose does, to run the stack's services locally.

No Docker engine runs on these machines. The services built from this repository's image run here as local
processes with their service's command and environment; service host names become 127.0.0.1, container
ports become the ports the services are published on, and files mounted from the repository (``./deploy/...``)
are read where they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

# $$, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME; a default may nest ${...}.
_REFERENCE = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>(?:[^{}]|\{[^{}]*\})*))?\}"
    r"|\$(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariableError(KeyError):
    pass


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Compose's variable substitution in one string."""

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        operator, argument = match.group("operator"), match.group("argument") or ""
        value = variables.get(name)
        unset = value is None or (value == "" and operator is not None and operator.startswith(":"))
        if operator in (":-", "-"):
            return interpolate(argument, variables) if unset else value
        if unset and operator in (":?", "?"):
            raise MissingVariableError(f"{name}: {argument}")
        if value is None:
            raise MissingVariableError(f"{name} is not set")
        return value

    return _REFERENCE.sub(substitute, text)


def referenced_variables(text: str) -> set[str]:
    """The names that ``${...}`` or ``$NAME`` refer to (``$$`` escapes excluded), nested defaults included."""
    names = set()
    for match in _REFERENCE.finditer(text):
        if match.group(0) != "$$":
            names.add(match.group("braced") or match.group("plain"))
            names |= referenced_variables(match.group("argument") or "")
    return names


def read_env_file(path: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """``NAME=value`` lines as Compose reads a .env file: values may refer to names above them, and a name set
    in ``environ`` (the shell) wins over the file."""
    variables: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, raw = line.partition("=")
        variables[name] = environ[name] if name in environ else interpolate(raw, {**variables, **environ})
    return variables


def _interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(value, variables) for key, value in node.items()}
    return node


def load_compose(variables: Mapping[str, str]) -> dict:
    """docker-compose.yml after YAML merges and variable substitution."""
    return _interpolated(yaml.safe_load(COMPOSE_FILE.read_text()), variables)


@dataclass
class LocalStack:
    """The compose file's services as they run on this machine."""

    services: dict[str, dict]
    # Where the containers' mounted folders are, here.
    volumes: Path = Path("/tmp")

    @property
    def published(self) -> dict[str, dict[str, str]]:
        """Each service's container ports mapped to the ports they are published on."""
        ports: dict[str, dict[str, str]] = {}
        for name, service in self.services.items():
            for mapping in service.get("ports", []):
                published, container = str(mapping).rsplit(":", 1)
                ports.setdefault(name, {})[container] = published.rsplit(":", 1)[-1]
        return ports

    def localize(self, value: str, variable: str = "") -> str:
        """``service:port`` becomes ``127.0.0.1:published port``, a ``*_HOST`` naming a service 127.0.0.1, a
        mounted container folder a folder under ``volumes``, and one bound from the repository that folder."""
        if variable.endswith("_HOST") and value in self.services:
            return "127.0.0.1"
        for service in self.services.values():
            for volume in service.get("volumes", []):
                source, mounted = volume.split(":")[:2]
                here = ROOT / source if source.startswith("./") else self.volumes / Path(mounted).name
                value = value.replace(mounted, str(here))
        for name, ports in self.published.items():
            for container, published in ports.items():
                value = re.sub(rf"(?<![\w.-]){re.escape(name)}:{container}\b", f"127.0.0.1:{published}", value)
        return value

    def environment(self, service: str) -> dict[str, str]:
        environment = self.services[service].get("environment") or {}
        return {name: self.localize(str(value), name) for name, value in environment.items()}

    def command(self, service: str) -> list[str]:
        return [self.localize(part) for part in self.services[service].get("command", [])]

    def argv(self, service: str) -> list[str]:
        """What the container runs: its entrypoint, if the service sets one, followed by its command."""
        entrypoint = self.services[service].get("entrypoint", [])
        return [self.localize(part) for part in entrypoint] + self.command(service)

    def healthcheck(self, service: str) -> list[str]:
        kind, *command = self.services[service]["healthcheck"]["test"]
        assert kind in ("CMD", "CMD-SHELL"), f"{service}: local runs know CMD and CMD-SHELL health checks, not {kind}"
        command = [self.localize(part) for part in command]
        return ["sh", "-c", *command] if kind == "CMD-SHELL" else command

    def built_here(self) -> list[str]:
        """Services whose image is built from this repository."""
        return [name for name, service in self.services.items() if "build" in service]
