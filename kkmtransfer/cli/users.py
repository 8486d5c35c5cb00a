"""kkmtransfer users: registers' users."""
from __future__ import annotations

import sys

import click

from . import _billing, domain_errors, main


@main.group()
def users():
    """Registers' users (HTTP Basic credentials of the SOAP service)."""


@users.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
@domain_errors
def users_add(name, password_stdin):
    """Create a register user NAME, or set a new password for it.

    The password is stored as a scrypt hash. Without --password-stdin you are asked for it twice.
    """
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    created = _billing().add_user(name, password)
    click.echo(f"user {name} {'created' if created else 'updated'}")


@users.command("list")
def users_list():
    """List register users."""
    for user in _billing().list_users():
        state = "disabled" if user["disabled"] else "active"
        click.echo(f"{user['name']}\t{state}\t{user['created_at']:%Y-%m-%d %H:%M}Z")


@users.command("disable")
@click.argument("name")
@domain_errors
def users_disable(name):
    """Disable a register user (its calls get HTTP 401 from now on)."""
    _billing().disable_user(name)
    click.echo(f"user {name} disabled")
