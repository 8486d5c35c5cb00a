"""The back-office command line: ``kkmtransfer --help``."""
from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

import click

from .config import ConfigError, Settings
from .domain import errors
from .domain.model import CardStatus

DEMO_USER = "kassa1"
DEMO_PASSWORD = "kassa1-demo"
DEMO_PREFIX = "777"
DEMO_FIRST, DEMO_LAST, DEMO_WIDTH = 1, 10, 7
DEMO_PHONE = "+7 (916) 123-45-67"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc))


def _billing():
    """The service layer on the configured database. An empty database gets the schema at once (a
    notice says so); an older schema is never changed behind the operator's back: `db upgrade`."""
    from .adapters.migrate import current_revision, upgrade
    from .app import SchemaError, create_billing, require_schema

    billing = create_billing(_settings())
    if current_revision(billing.engine) is None:
        upgrade(billing.settings.database_url)
        click.echo(f"empty database: schema created ({_safe_url(billing.settings.database_url)})", err=True)
    try:
        require_schema(billing.engine, billing.settings.database_url)
    except SchemaError as exc:
        raise click.ClickException(str(exc))
    return billing


@contextlib.contextmanager
def _progress(label: str, length: int = 0):
    """A progress bar on stderr; yields ``advance(n)``. The length grows when the work turns out larger
    than announced (or was not known: 0)."""
    with click.progressbar(length=max(length, 1), label=label, file=sys.stderr) as bar:
        yield _Advance(bar)


class _Advance:
    def __init__(self, bar):
        self.bar = bar

    @property
    def pos(self) -> int:
        return self.bar.pos

    def __call__(self, n: int) -> None:
        self.bar.length = max(self.bar.length, self.bar.pos + n)
        self.bar.update(n)


def domain_errors(fn):
    """Show a domain error as a one-line message and exit 1, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except errors.DomainError as exc:
            raise click.ClickException(f"{exc.code}: {exc.message}")

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kkmtransfer")
def main():
    """kkmtransfer: the discount-card billing server for cash registers.

    Settings come from the environment: KKMTRANSFER_DATABASE_URL (default: SQLite under ./var/),
    KKMTRANSFER_TIMEZONE (default Europe/Moscow), KKMTRANSFER_MAX_REQUEST_BYTES (default 1 MiB).
    """


# -- db --------------------------------------------------------------------------------------
@main.group()
def db():
    """The database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision):
    """Create the schema or bring it up to date. Safe to run again."""
    from .adapters.db import make_engine
    from .adapters.migrate import current_revision, head_revision, upgrade

    settings = _settings()
    if head_revision(settings.database_url) is None:
        raise click.ClickException("this installation has no migration scripts: reinstall the package")
    upgrade(settings.database_url, revision)
    engine = make_engine(settings.database_url)
    try:
        click.echo(f"database is at revision {current_revision(engine)}: {_safe_url(settings.database_url)}")
    finally:
        engine.dispose()


@db.command("current")
def db_current():
    """Print the schema revision of the database and the newest one this version knows."""
    from .adapters.db import make_engine
    from .adapters.migrate import current_revision, head_revision

    settings = _settings()
    engine = make_engine(settings.database_url)
    click.echo(f"current: {current_revision(engine) or '(empty database)'}")
    click.echo(f"head:    {head_revision(settings.database_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- serve -----------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def serve(host, port, log_level):
    """Serve the SOAP endpoint /KKMTransfer (WSDL at /KKMTransfer?wsdl) for local use.

    A threaded server from the standard library; in production run gunicorn with
    kkmtransfer.wsgi:application (see docs/operations.md).
    """
    from .app import configure_logging
    from .soap.devserver import make_server
    from .soap.http import KKMTransferApp

    configure_logging(log_level.upper())
    billing = _billing()
    server = make_server(host, port, KKMTransferApp(billing, billing.settings))
    real_port = server.server_address[1]
    click.echo(f"KKMTransfer on http://{host}:{real_port}/KKMTransfer (WSDL: ?wsdl); Ctrl+C stops", err=True)
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# -- users -----------------------------------------------------------------------------------
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


# -- cards -----------------------------------------------------------------------------------
@main.group()
def cards():
    """Discount cards: group input, look-up, blocking, phone."""


@cards.command("add-range")
@click.option("--from", "first", required=True, type=click.IntRange(min=0), help="First number of the range.")
@click.option("--to", "last", required=True, type=click.IntRange(min=0), help="Last number (inclusive).")
@click.option("--prefix", default="", help="Text put before each number, e.g. 2000.")
@click.option("--width", default=0, type=click.IntRange(0, 32), help="Zero-pad the number to this many digits.")
@click.option("--holder", default=None, help="Holder's display name for all the new cards.")
@domain_errors
def cards_add_range(first, last, prefix, width, holder):
    """Create the cards PREFIX+N for N from --from to --to (group input). Existing ones are left alone."""
    result = _billing().add_card_range(first, last, prefix, width, holder)
    click.echo(f"{len(result.created)} cards created, {len(result.skipped)} already existed")
    if result.created:
        click.echo(f"first {result.created[0]}, last {result.created[-1]}")


@cards.command("show")
@click.argument("number")
@domain_errors
def cards_show(number):
    """Show a card's status and balances."""
    view = _billing().card_info(number)
    click.echo(format_card(view))


def format_card(view) -> str:
    b = view.balances
    lines = [
        f"card          {view.number}",
        f"status        {view.status.value}",
        f"holder        {view.holder or '-'}",
        f"bonus         {b.bonus} (pending {b.bonus_pending})",
        f"next expiry   {b.next_expiry_date or '-'} {b.next_expiry_amount if b.next_expiry_date else ''}".rstrip(),
        f"accumulation  {b.accumulation} (pending {b.accumulation_pending})",
        f"receipts      {b.receipt_count} (pending {b.receipt_count_pending})",
    ]
    return "\n".join(lines)


@cards.command("block")
@click.argument("number")
@domain_errors
def cards_block(number):
    """Block a card: it can still be read, but not used in receipts."""
    _billing().set_card_status(number, CardStatus.BLOCKED)
    click.echo(f"card {number} blocked")


@cards.command("unblock")
@click.argument("number")
@domain_errors
def cards_unblock(number):
    """Unblock a card."""
    _billing().set_card_status(number, CardStatus.ACTIVE)
    click.echo(f"card {number} active")


@cards.command("set-phone")
@click.argument("number")
@click.argument("phone")
@domain_errors
def cards_set_phone(number, phone):
    """Set the holder's phone (any common notation; stored as 10 digits). Use '' to clear it."""
    digits = _billing().set_card_phone(number, phone or None)
    click.echo(f"card {number} phone {digits or '(none)'}")


@cards.command("set-holder")
@click.argument("number")
@click.argument("holder")
@domain_errors
def cards_set_holder(number, holder):
    """Set the holder's display name. Use '' to clear it."""
    _billing().set_card_holder(number, holder or None)
    click.echo(f"card {number} holder {holder or '(none)'}")


@cards.command("set-rule")
@click.argument("number", required=False)
@click.option("--from", "first", help="First card number of a range (compared as text: same-length numbers).")
@click.option("--to", "last", help="Last card number of the range (inclusive).")
@click.option("--accumulation-delay-days", type=click.IntRange(min=0),
              help="Accumulation counts this many calendar days after the receipt's day.")
@click.option("--accumulation-lifetime-days", type=click.IntRange(min=0),
              help="Accumulation burns after this many days of life (0: never).")
@click.option("--count-delay-days", type=click.IntRange(min=0),
              help="Receipt counts count this many calendar days after the receipt's day.")
@click.option("--count-lifetime-days", type=click.IntRange(min=0),
              help="Receipt counts burn after this many days of life (0: never).")
@domain_errors
def cards_set_rule(number, first, last, **rules):
    """Set the deferral and lifetime of accumulation and receipt count for card NUMBER, or for every card
    from --from to --to (group processing). Options not given stay as they are. The rule applies to
    receipts registered from now on."""
    if bool(number) == bool(first or last) or (first is None) != (last is None):
        raise click.UsageError("give either NUMBER or both --from and --to")
    changed = _billing().set_card_rules(number or first, None if number else last, **rules)
    click.echo(f"rules set on {changed} card(s)")


# -- promotions ------------------------------------------------------------------------------
@main.group()
def promotions():
    """Promotions ("Назначение акции") and their bonus life rules."""


@promotions.command("add")
@click.argument("code")
@click.option("--name", required=True, help="What the promotion is called.")
@click.option("--delay-days", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bonuses become spendable this many calendar days after the receipt's business day.")
@click.option("--lifetime-days", type=click.IntRange(min=1),
              help="Bonuses can be spent on this many days from the day they start, then burn.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]),
              help="Bonuses can be spent up to and including this day (business time zone), then burn.")
@click.option("--valid-from", type=click.DateTime(["%Y-%m-%d"]), help="First receipt day the promotion applies to.")
@click.option("--valid-to", type=click.DateTime(["%Y-%m-%d"]), help="Last receipt day the promotion applies to.")
@domain_errors
def promotions_add(code, name, delay_days, lifetime_days, until, valid_from, valid_to):
    """Create promotion CODE. Registers name it in RegisterOperation.PromotionCode; its rule decides
    when the receipt's bonuses start and burn. Without --lifetime-days or --until they never burn."""
    if lifetime_days and until:
        raise click.UsageError("--lifetime-days and --until exclude each other")
    _billing().add_promotion(code, name, delay_days, lifetime_days, until and until.date(),
                             valid_from and valid_from.date(), valid_to and valid_to.date())
    click.echo(f"promotion {code} created")


@promotions.command("list")
def promotions_list():
    """List promotions with their rules and validity."""
    from .domain.rules import LifeRule

    rows = _billing().list_promotions()
    if not rows:
        click.echo("no promotions")
    for p in rows:
        rule = LifeRule(p["delay_days"], p["lifetime_days"], p["until_date"]).describe()
        period = f"{p['valid_from'] or '…'} – {p['valid_to'] or '…'}"
        state = "closed" if p["closed_at"] else "open"
        click.echo(f"{p['code']}\t{p['name']}\t{period}\t{state}\t{rule}")


@promotions.command("close")
@click.argument("code")
@domain_errors
def promotions_close(code):
    """Close promotion CODE: receipts after today can no longer name it (returns still can)."""
    end = _billing().close_promotion(code)
    click.echo(f"promotion {code} closed; last day {end}")


# -- nightly regulation ----------------------------------------------------------------------
@main.command()
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]),
              help="Business date to run (default: today in the business time zone). Missed dates before it "
                   "are run first.")
@click.option("--batch", type=click.IntRange(min=1), help="Lots per transaction (default KKMTRANSFER_NIGHTLY_BATCH).")
@domain_errors
def nightly(day, batch):
    """Run the nightly regulation without Celery: burn what expired (WriteOff document) and post deferred
    credits whose day came (Accrual document). Safe to re-run: a date already done adds nothing, an
    interrupted one is completed."""
    from .service_layer.nightly import Nightly

    with contextlib.ExitStack() as stack:
        bars = {}

        def progress(what, done, total):  # one bar per document, its length known when it starts
            if what not in bars:
                bars[what] = stack.enter_context(_progress(f"{what:9}", total))
            bars[what](done - bars[what].pos)

        reports = Nightly(_billing(), batch=batch, progress=progress).run(day and day.date())
    for r in reports:
        state = "already done" if r.skipped else "done"
        click.echo(f"{r.day}: {state}; write-off {r.expired_lots} lots in {r.write_off_lines} lines, "
                   f"accrual {r.accrued_lots} lots in {r.accrual_lines} lines")


# -- offline journals --------------------------------------------------------------------------
@main.group()
def journal():
    """Registers' offline transaction journals (docs/offline-format.md)."""


def _summary_lines(summary) -> list[str]:
    line = (f"{summary.file}: {summary.rows} rows, {summary.applied} applied, {summary.already} already "
            f"applied, {summary.rejected} rejected")
    reasons = ", ".join(f"{code} {n}" for code, n in sorted(summary.reasons.items()))
    return [line + (f" ({reasons})" if reasons else "")]


@journal.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 10000),
              help="Rows per transaction.")
@domain_errors
def journal_import(files, batch):
    """Load journal FILES. Each row is applied exactly once, whatever was applied before (online or from
    other files); rows that cannot be applied are kept as rejects (see `journal rejects`)."""
    from .adapters.journal_file import JournalFileError
    from .service_layer.journal import ImportSummary, JournalImport

    total = ImportSummary(file="total")
    failed = 0
    with _progress("rows", JournalImport.rows_in(files)) as advance:
        importer = JournalImport(_billing(), batch=batch, progress=advance)
        results = []
        for path in files:
            try:
                results.append(importer.import_file(path))
            except JournalFileError as exc:
                failed += 1
                results.append(str(exc))
    for result in results:
        if isinstance(result, str):
            click.echo(f"FAILED {result}", err=True)
        else:
            total.add(result)
            click.echo(_summary_lines(result)[0])
    if len(files) > 1:
        click.echo(_summary_lines(total)[0])
    if failed:
        raise click.ClickException(f"{failed} file(s) could not be read")


@journal.command("rejects")
@click.option("--all", "show_all", is_flag=True, help="Also list rejects resolved since.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
def journal_rejects(show_all, limit):
    """List rows of journals that could not be applied: file, line, reason and the row itself."""
    from .service_layer.journal import PENDING, JournalImport

    rows = JournalImport(_billing()).rejects(None if show_all else PENDING, limit)
    if not rows:
        click.echo("no rejects" if show_all else "no pending rejects")
    for r in rows:
        click.echo(f"#{r['id']}\t{r['status']}\t{r['file_name']}:{r['line_no']}\t{r['fault_code']}: {r['reason']}"
                   f"\t(tries {r['attempts']})\n\t{r['raw_row']}")


@journal.command("retry")
def journal_retry():
    """Apply the pending rejects again (e.g. after a top-up or once the card exists)."""
    from .service_layer.journal import JournalImport

    importer = JournalImport(_billing())
    with _progress("rejects", len(importer.rejects())) as advance:
        importer.progress = advance
        summary = importer.retry()
    click.echo(f"{summary.rows} retried: {summary.applied} applied, {summary.already} already applied, "
               f"{summary.rejected} still rejected")


@journal.command("inbox")
@click.option("--dir", "inbox", type=click.Path(file_okay=False, path_type=Path),
              help="The inbox folder (default KKMTRANSFER_INBOX_DIR).")
@domain_errors
def journal_inbox(inbox):
    """Import every *.csv file in the inbox once, moving each to done/ or failed/ (what the Celery task
    does every minute)."""
    from .service_layer.inbox import process_inbox

    billing = _billing()
    results = process_inbox(billing, inbox or billing.settings.inbox_dir)
    if not results:
        click.echo("inbox empty")
    for r in results:
        if r.error:
            click.echo(f"FAILED {r.name} -> {r.moved_to}: {r.error}", err=True)
        else:
            click.echo(_summary_lines(r.summary)[0] + f" -> {r.moved_to}")


# -- billing start / stop, export ------------------------------------------------------------
@main.group()
def billing():
    """Starting and stopping billing on a live chain."""


@billing.command("enable")
@click.option("--start-date", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="First day billed (today or a past date). Opening balances are dated the day before.")
@click.option("--opening-balances", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CardNumber;Bonus;Accumulation;ReceiptCount file with a header (docs/offline-format.md).")
@domain_errors
def billing_enable(start_date, opening_balances):
    """Start billing: one InitialBalance operation per card of the file. Runs once; a bad line refuses
    the whole file (every bad line is listed)."""
    from .service_layer.billing_admin import BillingAdmin, read_opening_balances

    admin = BillingAdmin(_billing())
    total = len(read_opening_balances(opening_balances))
    with _progress("cards", total) as advance:
        n = admin.enable(start_date.date(), opening_balances, advance)
    click.echo(f"billing enabled from {start_date.date()}: {n} opening balance(s) written")


@billing.command("disable")
@click.option("--yes-i-have-a-backup", "confirmed", is_flag=True,
              help="Do not ask for the confirmation phrase (for scripts).")
@domain_errors
def billing_disable(confirmed):
    """Delete ALL billing data (operations, lots, documents, journals' keys and rejects, the billing
    start). Cards, users and promotions stay. Make a backup first."""
    from .service_layer.billing_admin import CONFIRMATION, BillingAdmin

    if not confirmed:
        click.echo("This deletes every billing operation and balance. Cards, users and promotions stay.", err=True)
        typed = click.prompt(f"Type {CONFIRMATION!r} to go on", default="", show_default=False, err=True)
        if typed.strip() != CONFIRMATION:
            raise click.ClickException("not confirmed: nothing deleted")
    removed = BillingAdmin(_billing()).disable()
    click.echo("deleted: " + ", ".join(f"{n} {table}" for table, n in removed.items()))


@main.group()
def export():
    """Files for registers."""


@export.command("balances")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")
@click.option("--cards", "cards_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Only these cards: a file with one card number per line.")
@domain_errors
def export_balances(out, cards_file):
    """Write every card's (or the listed cards') current bonus, accumulation and receipt count for
    registers working pseudo-online (docs/offline-format.md)."""
    from .service_layer.billing_admin import BillingAdmin

    numbers = cards_file.read_text(encoding="utf-8-sig").splitlines() if cards_file else None
    n = BillingAdmin(_billing()).export(out, numbers)
    click.echo(f"{n} card(s) written to {out}")


# -- back office: actions, annulment -----------------------------------------------------------
@main.group()
def actions():
    """Bonus actions on many cards ("Бонус-акция"), zeroing ("Обнуление бессрочных бонусов"), cancelling."""


def _selection(first, last, cards_file, all_active):
    from .service_layer.actions import Selection

    numbers = None
    if cards_file is not None:
        numbers = tuple(n.strip() for n in cards_file.read_text(encoding="utf-8-sig").splitlines() if n.strip())
    return Selection(first=first, last=last, numbers=numbers, all_active=all_active)


def _action_report(report, what: str) -> None:
    from .service_layer.actions import ZERO_KIND

    if report.dry_run:
        state = " (it exists already: nothing would change)" if report.already_done else ""
        click.echo(f"dry run: action {report.action_id} would {what} {report.cards} card(s), "
                   f"{report.amount} in all{state}")
    elif report.already_done:
        click.echo(f"action {report.action_id} was done before: nothing changed ({report.cards} card(s))")
    else:
        verb = "burnt" if report.kind == ZERO_KIND else "credited"
        click.echo(f"action {report.action_id}: {report.done} card(s), {report.amount} {verb}"
                   + (f", {report.skipped} blocked card(s) skipped" if report.skipped else ""))


@actions.command("credit")
@click.option("--amount", required=True, help="Bonus to credit to each card (> 0, 2 decimals).")
@click.option("--from", "first", help="First card number of a range (compared as text).")
@click.option("--to", "last", help="Last card number of the range (inclusive).")
@click.option("--cards", "cards_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file with one card number per line.")
@click.option("--all-active", is_flag=True, help="Every active card.")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]),
              help="Last day the bonus can be spent (inclusive, business time zone); default: never burns.")
@click.option("--note", help="Why (shown in the cards' history and in `report actions`).")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100000), help="Cards per transaction.")
@domain_errors
def actions_credit(amount, first, last, cards_file, all_active, until, note, dry_run, batch):
    """Credit --amount bonus to many cards at once, one operation per card. Giving the same command again
    the same day (e.g. after a crash) resumes the same action and never credits a card twice; use another
    --note for a second, separate action."""
    from .service_layer.actions import Actions

    selection = _selection(first, last, cards_file, all_active)
    with _progress("cards") as progress:
        report = Actions(_billing(), batch=batch, progress=progress).credit(
            amount, selection, until and until.date(), note, dry_run)
    _action_report(report, f"credit {amount} to")


@actions.command("zero")
@click.option("--inactive-since", required=True, type=click.DateTime(["%Y-%m-%d"]),
              help="Cards without a purchase (sale or return) on or after this day.")
@click.option("--note", help="Why.")
@click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100000), help="Cards per transaction.")
@domain_errors
def actions_zero(inactive_since, note, dry_run, batch):
    """Burn the non-expiring bonuses of cards whose last purchase is before --inactive-since (dated
    bonuses are left alone); one write-off operation per card."""
    from .service_layer.actions import Actions

    with _progress("cards") as progress:
        report = Actions(_billing(), batch=batch, progress=progress).zero(inactive_since.date(), note, dry_run)
    _action_report(report, "zero")


@actions.command("cancel")
@click.argument("action_id")
@domain_errors
def actions_cancel(action_id):
    """Reverse an action card by card. For a credit, what is left of it is taken back and the report lists
    what could not be (already spent or burnt); a zeroing gives the bonuses back."""
    from .service_layer.actions import Actions

    report = Actions(_billing()).cancel(action_id)
    click.echo(f"action {action_id} cancelled on {report.cards} card(s): {report.taken_back} reversed, "
               f"{report.kept} could not be taken back")
    for number, kept in report.kept_by_card[:200]:
        click.echo(f"  {number}\t{kept} not taken back (spent or burnt)")
    if len(report.kept_by_card) > 200:
        click.echo(f"  … and {len(report.kept_by_card) - 200} more cards")


@main.group()
def receipts():
    """Receipts' bonuses."""


@receipts.command("annul")
@click.argument("operation_id")
@click.option("--note", help="Why.")
@domain_errors
def receipts_annul(operation_id, note):
    """Take back the bonuses receipt OPERATION_ID accrued ("Аннулировать бонусы чека"), less what its
    returns took back; may leave a debt that later accruals pay."""
    result, amount = _billing().annul_receipt(operation_id, note)
    if result.status == "AlreadyApplied":
        click.echo(f"already annulled ({amount}); nothing changed")
    else:
        click.echo(f"annulled {amount} bonus; card {result.card.number} balance now {result.card.balances.bonus}")


# -- reports and verification ------------------------------------------------------------------
@main.group()
def report():
    """Reports: balances and turnovers, the operations journal, actions."""


def _write_csv(path: Path, header: list[str], rows) -> int:
    import csv

    n = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


@report.command("balances")
@click.option("--from", "first", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day (business zone).")
@click.option("--to", "last", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option("--card", help="Only this card.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV file.")
@domain_errors
def report_balances(first, last, card, csv_file):
    """Balances and turnovers ("Остатки и обороты") per card and measure, with totals: opening, accrued,
    spent, expired, returned, closing. Turnovers are signed as they move the balance, so opening plus
    turnovers is closing."""
    from .service_layer.reports import TURNOVERS, Reports

    result = Reports(_billing()).balances(first.date(), last.date(), card)
    header = ["card", "measure", "opening", *TURNOVERS, "closing"]

    def cells(line):
        return [line.card, line.measure, line.opening, *(getattr(line, t) for t in TURNOVERS), line.closing]

    rows = [cells(line) for line in result.lines] + [cells(t) for t in result.totals().values()]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    click.echo(f"balances and turnovers {result.first} .. {result.last}")
    for r in [header, *rows]:
        click.echo("  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if csv_file:
        _write_csv(csv_file, header, rows)
        click.echo(f"written to {csv_file}")


@report.command("operations")
@click.option("--card", help="Only this card.")
@click.option("--kkm", help="Only this register.")
@click.option("--kind", help="Sale, Return, Accrual, Expiry, Action, Zeroing, Annulment, InitialBalance.")
@click.option("--source", type=click.Choice(["Online", "Offline", "Nightly", "BackOffice"]), help="Only this source.")
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), help="First day (business zone).")
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), help="Last day (inclusive).")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
@click.option("--csv", "csv_file", type=click.Path(dir_okay=False, path_type=Path), help="Write CSV instead.")
def report_operations(card, kkm, kind, source, first, last, limit, csv_file):
    """The journal of operations, oldest first, with what each moved (bonus, accumulation, receipts)."""
    from .service_layer.reports import Reports

    rows = Reports(_billing()).operations(card, kkm, kind, source, first and first.date(), last and last.date(),
                                          limit)
    header = ["time", "card", "kind", "source", "kkm", "receipt", "bonus", "accumulation", "receipt_count",
              "operation_id", "note"]

    def cells(r):
        return [r["time"].isoformat(timespec="seconds"), r["card"], r["kind"], r["source"], r["kkm"], r["receipt"],
                r["bonus"], r["accumulation"], r["receipt_count"], r["id"], r["note"]]

    if csv_file:
        click.echo(f"{_write_csv(csv_file, header, map(cells, rows))} operation(s) written to {csv_file}")
        return
    click.echo("\t".join(header))
    for r in rows:
        click.echo("\t".join(str(c) for c in cells(r)))


@report.command("actions")
def report_actions():
    """Bonus actions and zeroings with their state."""
    from .service_layer.actions import Actions

    rows = Actions(_billing()).list()
    if not rows:
        click.echo("no actions")
    for a in rows:
        what = f"credit {a['amount']}" + (f" until {a['until_date']}" if a["until_date"] else "") \
            if a["kind"] == "credit" else f"zero, inactive since {a['inactive_since']}"
        click.echo(f"{a['id']}\t{a['created_at']:%Y-%m-%d %H:%M}Z\t{a['status']}\t{a['cards']} card(s)\t{what}"
                   f"\t{a['note'] or ''}")


@main.group()
def ledger():
    """The ledger's own checks."""


@ledger.command("verify")
def ledger_verify():
    """Recompute every balance from the entries; exit 1 with the list of differences if anything drifted."""
    from .service_layer.reports import Reports

    problems = Reports(_billing()).verify()
    if problems:
        for p in problems:
            click.echo(p)
        raise click.ClickException(f"{len(problems)} difference(s) found")
    click.echo("ledger consistent: every lot equals the sum of its entries, every receipt moved what it reported")


# -- demo ------------------------------------------------------------------------------------
@main.command()
@domain_errors
def demo():
    """Migrate the database and create demo cards and a demo register user (what `make run` uses)."""
    from .adapters.migrate import upgrade

    upgrade(_settings().database_url)
    billing = _billing()
    result = billing.add_card_range(DEMO_FIRST, DEMO_LAST, DEMO_PREFIX, DEMO_WIDTH, "Demo holder")
    first = f"{DEMO_PREFIX}{DEMO_FIRST:0{DEMO_WIDTH}d}"
    billing.set_card_phone(first, DEMO_PHONE)
    billing.add_user(DEMO_USER, DEMO_PASSWORD)
    last = f"{DEMO_PREFIX}{DEMO_LAST:0{DEMO_WIDTH}d}"
    click.echo(f"demo cards: {first} .. {last} ({len(result.created)} new); {first} has phone {DEMO_PHONE}")
    click.echo(f"demo register user: {DEMO_USER} / password: {DEMO_PASSWORD}")


if __name__ == "__main__":  # pragma: no cover
    main()
