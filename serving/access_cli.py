"""`carecast users ...` (coordinators' accounts) and `carecast audit ...` (the access trail).

Passwords are read from a hidden prompt, or one line of standard input (``--password-stdin``, for
scripts), never from an argument: arguments end up in shell history and ``ps``.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from carecast.audit import AuditLog, Record
from carecast.cli_support import fail, settings_or_exit

users_app = typer.Typer(help="Coordinators' accounts for the page: add, disable, list.", no_args_is_help=True)
audit_app = typer.Typer(help="The access trail: who saw which patients, and whether the trail is intact.",
                        no_args_is_help=True)

_STDIN = typer.Option("--password-stdin", help="Read the password from one line of standard input.")


def _accounts():
    from serving.ui.auth import Accounts

    return Accounts.from_settings(settings_or_exit())


def _password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


def _run(action) -> None:
    from serving.ui.auth import AccountError

    try:
        action()
    except AccountError as exc:
        fail(str(exc), code=2)


@users_app.command("add")
def add(name: Annotated[str, typer.Argument(help="User name: lower-case letters, digits, '.', '_', '-'.")],
        password_stdin: Annotated[bool, _STDIN] = False) -> None:
    """Create a coordinator account (the password is asked for, never given as an argument)."""
    acc = _accounts()
    _run(lambda: acc.add_user(name, _password(password_stdin)))
    typer.echo(f"user {name} added")


@users_app.command("password")
def password(name: str, password_stdin: Annotated[bool, _STDIN] = False) -> None:
    """Set a new password; the user's open sessions end."""
    acc = _accounts()
    _run(lambda: acc.set_password(name, _password(password_stdin)))
    typer.echo(f"password of {name} changed; their sessions ended")


@users_app.command("disable")
def disable(name: str) -> None:
    """Disable an account: it cannot log in, and its open sessions end at once."""
    acc = _accounts()
    ended: list[int] = []
    _run(lambda: ended.append(acc.disable(name)))
    typer.echo(f"user {name} disabled; {ended[0]} session(s) ended")


@users_app.command("enable")
def enable(name: str) -> None:
    """Enable a disabled account again."""
    acc = _accounts()
    _run(lambda: acc.enable(name))
    typer.echo(f"user {name} enabled")


@users_app.command("unlock")
def unlock(name: str) -> None:
    """Lift a lockout after too many failed logins (the user's name only; a locked address waits)."""
    _accounts().unlock(name)
    typer.echo(f"user {name} unlocked")


@users_app.command("list")
def list_users() -> None:
    """Every account: name, enabled, created, last login, open sessions."""
    rows = _accounts().users()
    if not rows:
        typer.echo("no users yet: carecast users add NAME")
        return
    typer.echo("name\tenabled\tcreated\tlast login\tsessions")
    for u in rows:
        typer.echo(f"{u.name}\t{'yes' if u.enabled else 'no'}\t{u.created}\t{u.last_login or 'never'}\t{u.sessions}")


def _trail() -> AuditLog:
    return AuditLog.from_settings(settings_or_exit())


def _show(records: list[Record], as_json: bool, empty: str) -> None:
    if not records:
        typer.echo(empty)
        return
    for r in records:
        if as_json:
            typer.echo(json.dumps({"seq": r.seq, "at": r.at, "who": r.who, "what": r.what,
                                   "patients": list(r.patients), "detail": r.detail}))
        else:
            typer.echo(r.line())


_SINCE = typer.Option(help="Only records at or after this UTC date or time (ISO, e.g. 2026-06-01).")
_JSON = typer.Option("--json", help="One JSON object per record, with every patient id.")


@audit_app.command("who-saw")
def who_saw(patient_id: Annotated[str, typer.Argument(help="The patient id.")],
            since: Annotated[str | None, _SINCE] = None, as_json: Annotated[bool, _JSON] = False) -> None:
    """Who looked at this patient: each record (when, who, through what) that showed them."""
    _show(_trail().who_saw(patient_id, since), as_json, "nobody: no record shows this patient")


@audit_app.command("what-saw")
def what_saw(who: Annotated[str, typer.Argument(help="A user name, or user:NAME, key:ID, cli:NAME.")],
             since: Annotated[str | None, _SINCE] = None, as_json: Annotated[bool, _JSON] = False,
             patients: Annotated[bool, typer.Option("--patients", help="Also list the patient ids each record showed.")] = False) -> None:
    """What this user (or API key) saw: each record, and with --patients which patients."""
    records = _trail().what_saw(who, since)
    _show(records, as_json, f"nothing: no record names {who}")
    if patients and not as_json:
        seen = list(dict.fromkeys(p for r in records for p in r.patients))
        typer.echo(f"{len(seen)} distinct patient(s):")
        for p in seen:
            typer.echo(f"  {p}")


@audit_app.command("verify")
def verify() -> None:
    """Check the hash chain; exit 1 naming the first broken record. Keep the printed head hash elsewhere to
    detect the newest records being cut off."""
    v = _trail().verify()
    if not v.ok:
        fail(f"access trail BROKEN at record {v.broken_seq}: {v.reason} ({v.records} record(s) read)", code=1)
    typer.echo(f"access trail intact: {v.records} record(s); head {v.head}")


@audit_app.command("purge")
def purge() -> None:
    """Remove records older than audit.retention_days (the purge itself is recorded)."""
    t = _trail()
    n = t.purge()
    typer.echo(f"removed {n} record(s) older than {t.retention_days} days")
