"""Agent config: the ONE module that parses config YAML.

    agent:     identity (region, zone, node) and scheduler limits
    modules:   blackbox_exporter's module schema (an existing blackbox.yml loads unchanged)
    checks:    continuous checks (name, module, target, interval, timeout, labels)
    api:       the bearer token for mutating API calls
    experiments: see agent.experiments.settings

YAML is composed into nodes first so every key keeps its line; pydantic then validates the
plain data, and each error is reported as ``file:line: path: what is wrong``. ``${VAR}``
(and ``${VAR:-default}``) expand from the environment in string values; ``$$`` is a literal
``$``. Unknown keys, duplicate keys and undefined variables are errors.

    config, warnings = load_config(Path("agent.yaml"))
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.experiments.settings import ExperimentSettings
from agent.faults.settings import FaultSettings
from probes.modules import Duration, Module

__all__ = [
    "DEFAULT_TIMEOUT",
    "RESERVED_LABELS",
    "APISettings",
    "AgentSettings",
    "Check",
    "Config",
    "ConfigError",
    "Identity",
    "load_config",
    "parse_config",
]

#: a check's timeout when neither the check nor its module sets one (capped by the interval)
DEFAULT_TIMEOUT = 10.0

#: labels seismo sets itself, or Prometheus owns; a check's `labels:` may not use them
RESERVED_LABELS = frozenset(
    {
        "check",
        "module",
        "target",
        "region",
        "zone",
        "node",
        "instance",
        "job",
        "le",
        "phase",
        "reason",
        "result",
        "quantile",
    }
)
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_CHECK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.:/-]{0,127}$")
_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used. ``errors`` are ``file:line: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identity(_Model):
    """Where this agent runs. Empty values come from SEISMO_REGION/ZONE/NODE, then the host."""

    region: str = ""
    zone: str = ""
    node: str = ""

    def resolved(self, env: Mapping[str, str]) -> Identity:
        return Identity(
            region=self.region or env.get("SEISMO_REGION", ""),
            zone=self.zone or env.get("SEISMO_ZONE", ""),
            node=self.node or env.get("SEISMO_NODE", "") or socket.gethostname(),
        )


class AgentSettings(_Model):
    region: str = ""
    zone: str = ""
    node: str = ""
    max_concurrency: int = Field(default=512, ge=1, le=100_000)
    watch_config: bool = True
    watch_interval: Duration = 5.0
    probe_default_timeout: Duration = DEFAULT_TIMEOUT

    def identity(self, env: Mapping[str, str]) -> Identity:
        return Identity(region=self.region, zone=self.zone, node=self.node).resolved(env)


class APISettings(_Model):
    """Bearer token for mutating API calls. Without one, mutating calls are refused."""

    token: str | None = None
    token_file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> APISettings:
        if self.token and self.token_file:
            raise ValueError("token and token_file are mutually exclusive")
        if self.token is not None and len(self.token) < 16:
            raise ValueError("token must be at least 16 characters")
        return self


LabelMap = Annotated[dict[str, str], Field(default_factory=dict)]


class Check(_Model):
    name: str
    module: str
    target: str = Field(min_length=1)
    interval: Duration = 30.0
    timeout: Duration | None = None
    labels: LabelMap

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _CHECK_NAME.match(name):
            raise ValueError(
                f"check name {name!r} must start with a letter or digit and use only "
                "letters, digits and _.:/- (at most 128 characters)"
            )
        return name

    @field_validator("interval")
    @classmethod
    def _interval(cls, interval: float) -> float:
        if interval < 0.1:
            raise ValueError(f"interval {interval:g}s is below the minimum of 100ms")
        return interval

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ValueError(f"label name {name!r} is not a valid Prometheus label name")
            if name in RESERVED_LABELS:
                raise ValueError(f"label name {name!r} is reserved (set by seismo or Prometheus)")
        return labels

    @model_validator(mode="after")
    def _timeout(self) -> Check:
        if self.timeout is not None and self.timeout > self.interval:
            raise ValueError(
                f"timeout {self.timeout:g}s is longer than interval {self.interval:g}s "
                "(runs of a check never overlap, so timeout must be <= interval)"
            )
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout must be greater than 0")
        return self


class Config(_Model):
    agent: AgentSettings = AgentSettings()
    modules: dict[str, Module] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    api: APISettings = APISettings()
    experiments: ExperimentSettings = ExperimentSettings()
    faults: FaultSettings = FaultSettings()

    @model_validator(mode="after")
    def _references(self) -> Config:
        seen: set[str] = set()
        for i, check in enumerate(self.checks):
            if check.name in seen:
                raise _located(("checks", i, "name"), f"duplicate check name {check.name!r}")
            seen.add(check.name)
            module = self.modules.get(check.module)
            if module is None:
                known = ", ".join(sorted(self.modules)) or "none defined"
                raise _located(
                    ("checks", i, "module"),
                    f"unknown module {check.module!r} (modules: {known})",
                )
            if check.timeout is None and module.timeout and module.timeout > check.interval:
                raise _located(
                    ("checks", i, "interval"),
                    f"interval {check.interval:g}s is shorter than module {check.module!r}'s "
                    f"timeout {module.timeout:g}s; set the check's timeout <= interval",
                )
        return self

    def effective_timeout(self, check: Check) -> float:
        """The scheduler's timeout for ``check``: check, then module, then default; <= interval."""
        module = self.modules[check.module]
        timeout = check.timeout or module.timeout or self.agent.probe_default_timeout
        return min(timeout, check.interval)

    def warnings(self) -> list[tuple[tuple[str | int, ...], str]]:
        out: list[tuple[tuple[str | int, ...], str]] = []
        for name, module in self.modules.items():
            if not module.supported:
                out.append(
                    (
                        ("modules", name, "prober"),
                        f"module {name!r}: prober {module.prober!r} is not supported by seismo; "
                        "it loads, but probing with it fails with reason 'unsupported'",
                    )
                )
        return out


class _LocatedError(ValueError):
    """A cross-field error that knows which config path it belongs to."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _located(path: tuple[str | int, ...], message: str) -> _LocatedError:
    return _LocatedError(path, message)


# --- YAML with line numbers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Source:
    filename: str
    lines: dict[tuple[str | int, ...], int]

    def line_of(self, path: tuple[str | int, ...]) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def _construct(
    node: yaml.Node,
    path: tuple[str | int, ...],
    src: _Source,
    env: Mapping[str, str],
    errors: list[str],
) -> Any:
    src.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                errors.append(
                    f"{src.filename}:{key_node.start_mark.line + 1}: "
                    "YAML merge keys (<<) are not supported"
                )
                continue
            key = yaml.SafeLoader(" ").construct_object(key_node)  # plain scalar key
            if not isinstance(key, str | int | bool | float):
                errors.append(
                    f"{src.filename}:{key_node.start_mark.line + 1}: "
                    "mapping keys must be plain scalars"
                )
                continue
            child = (*path, str(key))
            if key in out:
                errors.append(
                    f"{src.filename}:{key_node.start_mark.line + 1}: "
                    f"{_dotted(child)}: duplicate key {key!r}"
                )
                continue
            src.lines[child] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, child, src, env, errors)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), src, env, errors) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    value = yaml.SafeLoader(" ").construct_object(node)
    if isinstance(value, str) and "$" in value:
        try:
            value = expand_env(value, env)
        except KeyError as exc:
            errors.append(
                f"{src.filename}:{node.start_mark.line + 1}: {_dotted(path)}: "
                f"environment variable {exc.args[0]} is not set "
                "(use ${VAR:-default} for a default)"
            )
    return value


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` / ``${VAR:-default}``; ``$$`` is ``$``. Raises KeyError(VAR)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise KeyError(name)

    return _ENV_REF.sub(sub, text)


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_config(
    text: str, filename: str = "<config>", env: Mapping[str, str] | None = None
) -> tuple[Config, list[str]]:
    """Parse and validate config text. Returns (config, warnings); raises ConfigError."""
    env = os.environ if env is None else env
    src = _Source(filename, {})
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{filename}:{line}: YAML syntax error: {exc.problem or exc}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{filename}:1: YAML error: {exc}"]) from exc
    if root is None:
        data: Any = {}
    else:
        errors: list[str] = []
        data = _construct(root, (), src, env, errors)
        if errors:
            raise ConfigError(errors)
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the config must be a mapping (modules:, checks:, ...)"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, src)) from exc
    warnings = [
        f"{filename}:{src.line_of(path)}: warning: {msg}" for path, msg in config.warnings()
    ]
    return config, warnings


def _format_errors(exc: ValidationError, src: _Source) -> list[str]:
    out: list[str] = []
    for err in exc.errors(include_url=False):
        path: tuple[str | int, ...] = tuple(
            p for p in err["loc"] if not (isinstance(p, str) and "[" in p)
        )
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _LocatedError):
            path, message = ctx_error.path, ctx_error.message
        else:
            message = _message(err, path)
        out.append(f"{src.filename}:{src.line_of(path)}: {_dotted(path)}: {message}")
    return out


def _message(err: Any, path: tuple[str | int, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {path[-1]!r} (not in the schema; check the spelling)"
    if kind == "missing":
        return f"required key {path[-1]!r} is missing"
    if kind == "literal_error":
        expected = (err.get("ctx") or {}).get("expected", "")
        return f"{err['input']!r} is not allowed (expected {expected})"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if kind not in ("value_error", "assertion_error") and "input" in err:
        msg = f"{msg} (got {err['input']!r})"
    return msg


def load_config(path: Path, env: Mapping[str, str] | None = None) -> tuple[Config, list[str]]:
    """Read and parse a config file. Raises ConfigError with ``file:line`` messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:0: cannot read config: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}:0: config is not UTF-8 text: {exc}"]) from exc
    return parse_config(text, str(path), env)
