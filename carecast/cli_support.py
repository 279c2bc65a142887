"""Small helpers every CLI module shares: settings with a clean error, a one-line failure."""

from __future__ import annotations

from typing import NoReturn

import typer

from carecast import logs
from carecast.settings import Settings, SettingsError, load_settings


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero: the message names file, field and rule."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=code)


def settings_or_exit() -> Settings:
    try:
        s = load_settings()
    except SettingsError as exc:
        fail(str(exc))
    logs.configure(s.log_level)
    return s
