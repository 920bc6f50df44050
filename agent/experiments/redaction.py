"""Redact secrets from everything a run writes (event log, journal, chaostoolkit.log).

Every leaf value of the loaded secrets (inline ones, and those read from the environment or
from ``--var-file``) is replaced by ``***`` wherever it appears, also inside longer strings
(an Authorization header echoed in a probe's output). Values shorter than
``MIN_SUBSTRING`` characters are only redacted where they are the whole string, so a
one-letter secret does not mangle every word.

    redactor = Redactor.from_secrets({"api": {"token": "s3cr3t"}})
    redactor.redact({"header": "Bearer s3cr3t"})  # {"header": "Bearer ***"}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["MASK", "MIN_SUBSTRING", "Redactor", "mask_secret_definitions"]

MASK = "***"
MIN_SUBSTRING = 4


def _leaves(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif value is not None and not isinstance(value, bool):
        yield str(value)


@dataclass(frozen=True, slots=True)
class Redactor:
    """Replaces known secret values; longest first, so overlapping secrets vanish whole."""

    values: tuple[str, ...] = ()

    @classmethod
    def from_secrets(cls, *secrets: Any) -> Redactor:
        found = {v for s in secrets for v in _leaves(s) if v}
        return cls(tuple(sorted(found, key=len, reverse=True)))

    def text(self, value: str) -> str:
        for secret in self.values:
            if value == secret:
                return MASK
            if len(secret) >= MIN_SUBSTRING and secret in value:
                value = value.replace(secret, MASK)
        return value

    def redact(self, value: Any) -> Any:
        """A JSON-ready deep copy of ``value`` with secrets masked (enums become values)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Enum):
            return self.redact(value.value)
        if isinstance(value, Mapping):
            return {str(self.redact(k)): self.redact(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.redact(v) for v in value]
        if isinstance(value, bytes):
            return self.text(value.decode("utf-8", "replace"))
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.text(str(value))


def mask_secret_definitions(secrets: Any) -> Any:
    """Mask inline values in an experiment's ``secrets`` block; keep env/vault references."""
    if isinstance(secrets, Mapping):
        if secrets.get("type") in ("env", "vault"):
            return dict(secrets)
        return {k: mask_secret_definitions(v) for k, v in secrets.items()}
    return MASK
