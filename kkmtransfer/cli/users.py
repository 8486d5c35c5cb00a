"""kkmtransfer users: registers' users."""
from __future__ import annotations

import sys

import click

from . import _billing, actor, domain_errors, main


@main.group()
def users():
    """Registers' users (HTTP Basic credentials of the SOAP service)."""


@users.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
@click.option("--kkm", "kkms", metavar="K1,K2",
              help="Bind the user to these KKM codes: its operations for other registers are refused ('' unbinds).")
@click.option("--store", metavar="S",
              help="Bind the user to this store: its operations for other stores are refused ('' unbinds).")
@domain_errors
def users_add(name, password_stdin, kkms, store):
    """Create a register user NAME, or set a new password for it.

    The password is stored as a scrypt hash. Without --password-stdin you are asked for it twice.
    A user without --kkm/--store may post for any register (an existing binding stays unless given again).
    """
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    billing = _billing()
    created = billing.add_user(name, password, actor(), kkms=None if kkms is None else kkms.split(","),
                               store=store)
    scope = [f"KKM {kkms}" if kkms else "", f"store {store}" if store else ""]
    bound = " and ".join(s for s in scope if s)
    click.echo(f"user {name} {'created' if created else 'updated'}" + (f", bound to {bound}" if bound else ""))


@users.command("list")
def users_list():
    """List register users (and the registers or store a user is bound to)."""
    for user in _billing().list_users():
        state = "disabled" if user["disabled"] else "active"
        scope = ", ".join(s for s in (user.get("kkms") and f"KKM {user['kkms']}",
                                      user.get("store") and f"store {user['store']}") if s) or "any register"
        click.echo(f"{user['name']}\t{state}\t{user['created_at']:%Y-%m-%d %H:%M}Z\t{scope}")


@users.command("disable")
@click.argument("name")
@domain_errors
def users_disable(name):
    """Disable a register user (its calls get HTTP 401 from now on)."""
    _billing().disable_user(name, actor())
    click.echo(f"user {name} disabled")
