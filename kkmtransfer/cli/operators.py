"""kkmtransfer operators: the web console's operators and their roles (separate from register users)."""
from __future__ import annotations

import sys

import click

from . import _billing, domain_errors, main

ROLES = ["viewer", "operator", "admin"]


@main.group()
def operators():
    """Operators of the web console: viewer (reads), operator (also blocks cards, annuls receipts, runs
    actions, retries journal rejects), admin (also manages operators, promotions and the bonus program)."""


@operators.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES), help="What the operator may do.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
@domain_errors
def operators_add(name, role, password_stdin):
    """Create operator NAME with --role, or give an existing one a new role and password (which also
    enables it again and lifts a login lock). The password is stored as a scrypt hash; at least 8
    characters. Without --password-stdin you are asked for it twice."""
    from ..service_layer.operators import Operators

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    created = Operators(_billing()).add(name, role, password)
    click.echo(f"operator {name} ({role}) {'created' if created else 'updated'}")


@operators.command("list")
def operators_list():
    """List the console's operators with their roles."""
    from ..service_layer.operators import Operators

    found = Operators(_billing()).list()
    if not found:
        click.echo("no operators: add one with `kkmtransfer operators add NAME --role admin`")
    for op in found:
        click.echo(f"{op.name}\t{op.role.value}\t{'disabled' if op.disabled else 'active'}"
                   f"\t{op.created_at:%Y-%m-%d %H:%M}Z")


@operators.command("disable")
@click.argument("name")
@domain_errors
def operators_disable(name):
    """Disable operator NAME: its sessions end at its next request, it cannot log in."""
    from ..service_layer.operators import Operators

    Operators(_billing()).disable(name)
    click.echo(f"operator {name} disabled")
