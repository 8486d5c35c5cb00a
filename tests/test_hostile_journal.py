"""Hostile and careless journals (issue 13 §2, §4, §11, §12; issue 12 §5): one bad row never stops a file,
money only in the decimal form, cp1251 files, any batch size on PostgreSQL, `ledger verify` during an
import, rejects dismissed by hand."""
from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from decimal import Decimal as D

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from kkmtransfer.adapters.db import journal_keys, journal_rejects, operations
from kkmtransfer.adapters.journal_file import HEADER, JournalFileError
from kkmtransfer.domain import errors
from kkmtransfer.service_layer.inbox import process_inbox
from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.reports import Reports

from .helpers import ISSUED
from .test_journal import T0, journal, line


def count(db, table, *where) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def rejects(db):
    with db.engine.connect() as conn:
        return {r["line_no"]: r for r in conn.execute(select(journal_rejects)).mappings()}


@pytest.fixture
def cards(db):
    db.add_card_range(1, 3, "J", 0, None, issued=ISSUED)
    db.clock.set(T0 + timedelta(days=1))
    return db


def with_time(text: str, number: str) -> str:
    return ";".join(["K1", number, text, "Sale", "J1", "R", "100.00", "1.00", "0.00", "", "", "", "", ""])


def test_times_out_of_range_are_rejects_and_the_rest_is_applied(cards, tmp_path):
    path = journal(tmp_path, "t.csv", line(number="1", accrued="2.00"),
                   with_time("9999-12-31T23:30:00Z", "2"), with_time("0001-01-01T00:00:00+03:00", "3"),
                   with_time("9999-12-31T23:59:59+00:00", "4"), line(number="5", accrued="3.00"))
    summary = JournalImport(cards).import_file(path)
    assert (summary.applied, summary.rejected) == (2, 3)
    got = rejects(cards)
    assert set(got) == {3, 4, 5} and all("TransactionTime" in r["reason"] for r in got.values())
    assert cards.card_info("J1").balances.bonus == D("5.00")


def test_an_unforeseen_failure_of_one_row_is_a_reject_and_the_batch_goes_on(cards, tmp_path, monkeypatch):
    real = cards.apply

    def apply(repo, request, *args, **kwargs):
        if request.card_number == "J2":
            raise OverflowError("date value out of range")
        return real(repo, request, *args, **kwargs)

    monkeypatch.setattr(cards, "apply", apply)
    path = journal(tmp_path, "o.csv", line(number="1", accrued="2.00"), line(number="2", card="J2"),
                   line(number="3", accrued="3.00"))
    summary = JournalImport(cards).import_file(path)
    assert (summary.applied, summary.rejected) == (2, 1)
    [bad] = rejects(cards).values()
    assert bad["line_no"] == 3 and "OverflowError" in bad["reason"]
    assert cards.card_info("J1").balances.bonus == D("5.00")


@pytest.mark.parametrize("text", ["1E2", "5_000.00", "\u0661\u0660\u0660", "\uff11\uff10\uff10", "0x10", "١٠٠,٠٠",
                                  "1,000.00", "--1", "Infinity", "NaN"])
def test_money_not_in_decimal_form_is_refused(cards, tmp_path, text):
    path = journal(tmp_path, "m.csv", line(number="1", total=text), line(number="2", accrued=text),
                   line(number="3", total="5 000,50", accrued="2,5"))
    summary = JournalImport(cards).import_file(path)
    assert (summary.applied, summary.rejected) == (1, 2)
    assert all("not a decimal number" in r["reason"] for r in rejects(cards).values())
    assert cards.card_info("J1").balances.accumulation == D("5000.50")


def test_a_receipt_count_in_other_digits_is_refused(cards, tmp_path):
    path = journal(tmp_path, "c.csv", line(number="1", count="\u0661"), line(number="2", count="2"))
    summary = JournalImport(cards).import_file(path)
    assert (summary.applied, summary.rejected) == (1, 1)
    assert cards.card_info("J1").balances.receipt_count == 2


def test_a_cp1251_journal_is_read_as_such(cards, tmp_path):
    path = tmp_path / "cp.csv"
    path.write_bytes(("\n".join([HEADER, line(number="1", receipt="Чек №1", accrued="4.00")]) + "\n")
                     .encode("cp1251"))
    summary = JournalImport(cards).import_file(path)
    assert summary.applied == 1 and cards.card_info("J1").balances.bonus == D("4.00")
    with cards.engine.connect() as conn:
        assert conn.execute(select(operations.c.receipt_number)).scalar_one() == "Чек №1"


def test_a_journal_in_neither_encoding_is_refused_in_one_line_that_says_how_to_convert(cards, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes((HEADER + "\n").encode() + b"K1;1;2026-11-20T10:00:00+03:00;Sale;J1;\x98;1;0;0;;;;;\n")
    with pytest.raises(JournalFileError) as caught:
        JournalImport(cards).import_file(path)
    message = str(caught.value)
    assert "\n" not in message and "iconv" in message and "UTF-8" in message
    assert count(cards, operations) == 0


def test_the_inbox_moves_on_past_a_file_with_a_hostile_row(cards, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    journal(inbox, "a.csv", with_time("9999-12-31T23:30:00Z", "1"), line(number="2", accrued="1.00"))
    journal(inbox, "b.csv", line(number="3", accrued="2.00"))
    results = process_inbox(cards, inbox)
    assert [r.error for r in results] == [None, None]
    assert sorted(p.name for p in (inbox / "done").iterdir()) == ["a.csv", "b.csv"]
    assert not list((inbox / "processing").iterdir())
    assert cards.card_info("J1").balances.bonus == D("3.00")


def test_a_reject_is_dismissed_by_hand_with_its_reason(cards, tmp_path):
    importer = JournalImport(cards)
    path = journal(tmp_path, "d.csv", line(number="1", spent="50.00"), line(number="2", card="nope"))
    assert importer.import_file(path).rejected == 2
    first, second = importer.rejects()
    with pytest.raises(errors.ValidationError, match="reason"):
        importer.dismiss(first["id"], "  ")
    with pytest.raises(errors.ValidationError, match="no journal reject"):
        importer.dismiss(10 ** 9, "typo")
    done = importer.dismiss(first["id"], "customer paid cash", actor="olga")
    assert (done["status"], done["note"]) == ("dismissed", "customer paid cash (by olga)")
    assert [r["id"] for r in importer.rejects()] == [second["id"]]
    with pytest.raises(errors.ValidationError, match="not pending"):
        importer.dismiss(first["id"], "again")
    assert importer.retry().rows == 1                     # a dismissed reject is not retried…
    importer.import_file(path)                            # …nor made pending again by the same file
    assert [r["id"] for r in importer.rejects()] == [second["id"]]


def test_a_batch_of_10000_rows_without_ids_imports(db, tmp_path):
    db.add_card_range(1, 100, "B", 3, None, issued=ISSUED)
    db.clock.set(T0 + timedelta(days=1))
    rows = [line(number=str(i), card=f"B{i % 100 + 1:03d}", accrued="1.00") for i in range(10000)]
    path = journal(tmp_path, "big.csv", *rows)
    summary = JournalImport(db, batch=10000).import_file(path)
    assert (summary.applied, summary.rejected) == (10000, 0)
    again = JournalImport(db, batch=10000).import_file(path)
    assert (again.applied, again.already) == (0, 10000)
    assert count(db, journal_keys) == 10000 and count(db, operations) == 10000
    assert db.card_info("B050").balances.bonus == D("100.00")


def test_ledger_verify_during_an_import_sees_no_false_difference(db, tmp_path):
    db.add_card_range(1, 200, "V", 3, None, issued=ISSUED)
    db.clock.set(T0 + timedelta(days=1))
    rows = [line(number=str(i), card=f"V{i % 200 + 1:03d}", accrued="1.00", spent="0.00") for i in range(4000)]
    path = journal(tmp_path, "v.csv", *rows)
    failure = []

    def load():
        try:
            JournalImport(db, batch=50).import_file(path)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            failure.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    checks, found = 0, []
    while loader.is_alive() or checks == 0:
        found.extend(Reports(db).verify())
        checks += 1
    loader.join()
    assert not failure and found == [] and checks >= 2, (checks, found[:5])
    assert count(db, operations) == 4000


_field = st.one_of(st.text(max_size=12), st.sampled_from(["", "1E2", "9999-12-31T23:30:00Z", "-0", "１", ";", '"',
                                                          "0001-01-01T00:00:00+03:00", "NaN", "\x00", "Return"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.integers(0, 13), _field), min_size=1, max_size=4))
def test_mutated_rows_are_rejects_and_the_good_row_is_applied(cards, tmp_path_factory, mutations):
    fields = line(number=str(uuid.uuid4()), accrued="0.00").split(";")
    for index, value in mutations:
        fields[index] = value.replace("\n", " ").replace("\r", " ")
    good_id = str(uuid.uuid4())
    path = journal(tmp_path_factory.mktemp("mut"), "m.csv", ";".join(fields),
                   line(number=str(uuid.uuid4()), op_id=good_id, accrued="0.00"))
    summary = JournalImport(cards).import_file(path)
    assert summary.rows == 2 and summary.applied + summary.already + summary.rejected == 2
    with cards.engine.connect() as conn:
        assert conn.execute(select(operations.c.id).where(operations.c.id == good_id)).scalar() == good_id
    assert Reports(cards).verify() == []


def test_a_row_loaded_before_the_secret_ids_keeps_its_stored_guid(cards, tmp_path):
    """An installation upgraded from the predictable ids: the stored key -> GUID pair wins, so a file loaded
    before is not applied a second time under a new id."""
    from kkmtransfer.adapters.db import journal_keys as keys_table
    from sqlalchemy import insert

    from .helpers import request

    old_id = str(uuid.uuid5(uuid.UUID("0d7c9c55-5b1e-4f7a-9f0e-2b8f3c1a6e42"),
                            f"K1/9/{T0.astimezone(__import__('datetime').timezone.utc).isoformat()}"))
    cards.register_operation(request("J1", op_id=old_id, time=T0, kkm="K1", accrued="3.00"))
    with cards.engine.begin() as conn:
        conn.execute(insert(keys_table).values(kkm="K1", transaction_number="9", transaction_time=T0,
                                               operation_id=old_id, created_at=T0))
    summary = JournalImport(cards).import_file(journal(tmp_path, "old.csv", line(number="9", accrued="3.00")))
    assert (summary.applied, summary.already, summary.rejected) == (0, 1, 0)
    assert cards.card_info("J1").balances.bonus == D("3.00") and count(cards, operations) == 1
