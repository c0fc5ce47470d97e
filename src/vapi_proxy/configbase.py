"""What every config section is built on: one strict model base, and one way to name a secret
(environment variables and files, never inline), read from the environment given to
`parse_settings`, never from `os.environ` directly."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
)

ENVIRON = "environ"
"""The validation-context key that carries the environment secrets are read from."""


class StrictModel(BaseModel):
    """A config section: a key it does not know is an error (a misspelt setting must never be
    silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def config_context(environ: Mapping[str, str]) -> dict[str, Any]:
    """The validation context for a config: `Model.model_validate(data, context=...)`."""
    return {ENVIRON: environ}


def environ_of(info: ValidationInfo) -> Mapping[str, str]:
    """The environment a config is validated with (empty when none was given)."""
    context = info.context if isinstance(info.context, Mapping) else {}
    environ = context.get(ENVIRON)
    return environ if isinstance(environ, Mapping) else {}


def as_list(value: Any) -> Any:
    """One name or a list of names (`secret_env: X` and `secret_env: [X, Y]` both work)."""
    if isinstance(value, str | Path):
        return [value]
    return value


def read_secrets(envs: list[str], files: list[Path], environ: Mapping[str, str]) -> list[SecretStr]:
    """Every named secret, in order (variables first); a missing or empty one is an error."""
    out: list[SecretStr] = []
    for name in envs:
        value = environ.get(name)
        if not value:
            raise ValueError(f"environment variable {name} is unset or empty")
        out.append(SecretStr(value))
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read secret_file {path}: {exc.strerror}") from None
        if not text:
            raise ValueError(f"secret_file {path} is empty")
        out.append(SecretStr(text))
    return out


class SecretSource(StrictModel):
    """Where a section's secret comes from: `secret_env` (variable names) and `secret_file`
    (paths), read once at load time. Subclasses decide whether one must be given."""

    secret_env: list[str] = Field(
        default_factory=list,
        description="Environment variable(s) holding the secret; several are all accepted "
        "(rotation: add the new one, switch Vapi over, then remove the old one).",
    )
    secret_file: list[Path] = Field(
        default_factory=list,
        description="File(s) holding the secret (trailing newline ignored); combined with "
        "`secret_env`.",
    )
    _secrets: list[SecretStr] = PrivateAttr(default_factory=list)

    @field_validator("secret_env", "secret_file", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return as_list(value)

    def _read(self, info: ValidationInfo) -> None:
        self._secrets = read_secrets(self.secret_env, self.secret_file, environ_of(info))

    @property
    def secrets(self) -> list[SecretStr]:
        """The secrets read at load time; the first is the one the proxy sends or signs with."""
        return list(self._secrets)
