"""Hypothesis-generated mutations of valid requests and journal rows (issue 13).

SOAP: valid envelopes of every operation are mutated (bytes cut, doubled, replaced; element texts swapped
for hostile strings; elements dropped, doubled or moved out of the namespace) and posted over real HTTP
to the threaded server. Every answer must be a SOAP envelope with a *client* fault or a plain 4xx (never a
``Server`` fault, never an HTML page, never a hang), the ledger stays consistent and the process's memory
stays bounded.

Journal: rows of a valid journal are mutated the same way; every mutated row is applied or rejected with
its reason, every untouched row of the same file is applied, and the ledger stays consistent.

``KKMTRANSFER_FUZZ_EXAMPLES`` sets the number of SOAP mutations per database (default 5,000: 10,000 in
all on SQLite and PostgreSQL) and ``KKMTRANSFER_FUZZ_JOURNAL_EXAMPLES`` the journal files (default 200).
"""
from __future__ import annotations

import os
import resource
import uuid
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from kkmtransfer.service_layer.journal import JournalImport
from kkmtransfer.service_layer.reports import Reports

from .conftest import PASSWORD, USER
from .helpers import ISSUED, request
from .test_bad_input import AUTH, CARD, HEADERS, NS, SOAP_ENV, envelope, register

SOAP_EXAMPLES = int(os.environ.get("KKMTRANSFER_FUZZ_EXAMPLES", "5000"))
JOURNAL_EXAMPLES = int(os.environ.get("KKMTRANSFER_FUZZ_JOURNAL_EXAMPLES", "200"))

pytestmark = pytest.mark.slow


def _valid_envelopes() -> list[bytes]:
    return [
        envelope(f"<k:GetCardInfo><k:CardNumber>{CARD}</k:CardNumber></k:GetCardInfo>"),
        envelope("<k:FindCardByPhone><k:Phone>+7 (912) 345-67-89</k:Phone></k:FindCardByPhone>"),
        envelope(f"<k:GetCardOperations><k:CardNumber>{CARD}</k:CardNumber><k:DateFrom>2026-01-01</k:DateFrom>"
                 "<k:DateTo>2026-12-31</k:DateTo><k:MaxRecords>10</k:MaxRecords></k:GetCardOperations>"),
        register(BonusSpent="0.00"),
        register(Kind="Return", OriginalOperationId=str(uuid.uuid4()), BonusAccrued="0.00", BonusSpent="0.00"),
    ]


HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "-1", "1E2", "5_000.00", "١٠٠", "１００", "NaN", "Infinity", "-0", "0.001",
                     "99999999999999999999.99", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+03:00",
                     "2026-02-30T10:00:00+03:00", "2026-11-23T10:00:00", "'; DROP TABLE operations; --",
                     "\u0000", "]]>", "&amp;", "<x/>", "true", "Sale", "Return", str(uuid.UUID(int=0))]),
)


@st.composite
def mutated_envelope(draw) -> bytes:
    base = draw(st.sampled_from(_valid_envelopes()))
    kind = draw(st.sampled_from(["bytes", "text", "drop", "double", "namespace", "attribute"]))
    if kind == "bytes":
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(i, min(len(data), i + 40)))
            how = draw(st.sampled_from(["cut", "repeat", "replace", "insert"]))
            if how == "cut":
                del data[i:j]
            elif how == "repeat":
                data[i:i] = data[i:j]
            elif how == "replace":
                data[i:j] = draw(st.binary(max_size=j - i + 2))
            else:
                data[i:i] = draw(st.binary(min_size=1, max_size=12))
        return bytes(data)
    root = etree.fromstring(base)
    elements = [el for el in root.iter() if etree.QName(el).namespace == NS]
    target = draw(st.sampled_from(elements))
    if kind == "text":
        leaves = [el for el in elements if len(el) == 0] or elements
        draw(st.sampled_from(leaves)).text = "".join(
            ch for ch in draw(HOSTILE_TEXT) if ch in "\t\n\r" or (ch >= " " and ch not in "\ufffe\uffff"
                                                                  and not "\ud800" <= ch <= "\udfff"))
    elif kind == "drop" and target.getparent() is not None:
        target.getparent().remove(target)
    elif kind == "double" and target.getparent() is not None:
        target.addnext(etree.fromstring(etree.tostring(target)))
    elif kind == "namespace":
        target.tag = draw(st.sampled_from([etree.QName(target).localname, f"{{urn:other}}{etree.QName(target).localname}"]))
    elif kind == "attribute":
        target.set(draw(st.sampled_from(["{http://www.w3.org/2001/XMLSchema-instance}type",
                                         "{http://www.w3.org/2001/XMLSchema-instance}nil", "id", f"{{{SOAP_ENV}}}mustUnderstand"])),
                   draw(st.sampled_from(["xsd:string", "xsd:long", "xsd:decimal", "true", "1", "x"])))
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


ALLOWED_HTTP = {200, 400, 401, 404, 405, 411, 413, 415, 429}


def _check_answer(r: requests.Response, sent: bytes) -> None:
    if r.status_code in ALLOWED_HTTP and not r.content.lstrip().startswith(b"<"):
        assert r.status_code != 200, sent
        return
    assert r.headers.get("X-Request-Id"), (r.status_code, r.text[:300], sent)
    assert r.headers.get("Content-Type", "").startswith("text/xml"), (r.status_code, r.text[:300], sent)
    root = etree.fromstring(r.content)
    fault = root.find(f".//{{{SOAP_ENV}}}Fault")
    if r.status_code == 200:
        assert fault is None, r.text[:300]
        return
    assert r.status_code == 500 and fault is not None, (r.status_code, r.text[:300], sent)
    code = fault.findtext("faultcode").rpartition(":")[2]
    assert code.startswith("Client") or code in ("VersionMismatch", "MustUnderstand"), (code, fault.findtext(
        "faultstring"), sent)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_mutated_envelopes_get_client_faults_and_leave_the_ledger_consistent(db, server):
    db.add_user(USER, PASSWORD)
    db.add_card_range(1, 2, prefix="777", width=7, issued=ISSUED)
    db.set_card_phone(CARD, "+79123456789")
    db.register_operation(request(CARD, receipt_sum="500.00", accrued="50.00"))
    session = requests.Session()
    session.auth = AUTH
    for warm in _valid_envelopes()[:4]:  # the unmutated requests work
        r = session.post(server, data=warm, headers=HEADERS, timeout=30)
        assert r.status_code == 200, r.text[:300]
    rss_before = _rss_mib()
    seen = {"n": 0}

    @settings(max_examples=SOAP_EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(mutated_envelope())
    def run(data: bytes):
        seen["n"] += 1
        r = session.post(server, data=data, headers=HEADERS, timeout=30)  # a hang fails here
        _check_answer(r, data)

    run()
    assert seen["n"] >= min(SOAP_EXAMPLES, 100)
    assert Reports(db).verify() == []
    grown = _rss_mib() - rss_before
    assert grown < 200, f"the server's process grew by {grown:.0f} MiB over {seen['n']} mutated requests"


JOURNAL_HEADER = ("KKM;TransactionNumber;TransactionTime;Kind;CardNumber;ReceiptNumber;ReceiptSum;BonusAccrued;"
                  "BonusSpent;AccumulationDelta;ReceiptCountDelta;OperationId;PromotionCode;OriginalOperationId")


def _good_row(n: int) -> str:
    return f"KKM-F;{n:08d};2026-11-20T10:{n % 60:02d}:00+03:00;Sale;{CARD};{n:08d};100.00;5.00;0.00;;;{uuid.uuid4()};;"


@st.composite
def mutated_row(draw, n: int) -> str:
    fields = _good_row(n).split(";")
    how = draw(st.sampled_from(["field", "bytes", "split", "join"]))
    if how == "field":
        i = draw(st.integers(0, len(fields) - 1))
        fields[i] = draw(HOSTILE_TEXT).replace("\n", " ").replace("\r", " ")
        return ";".join(fields)
    if how == "split":
        return ";".join(fields[:draw(st.integers(0, len(fields) - 1))])
    if how == "join":
        return ";".join(fields + [draw(HOSTILE_TEXT).replace("\n", " ").replace("\r", " ")])
    row = bytearray(";".join(fields).encode())
    i = draw(st.integers(0, len(row)))
    row[i:i + draw(st.integers(0, 8))] = draw(st.binary(max_size=8)).replace(b"\n", b" ").replace(b"\r", b" ")
    return row.decode("utf-8", errors="replace")


def test_mutated_journal_rows_are_rejects_and_never_stop_their_neighbours(db, tmp_path_factory):
    db.add_card_range(1, 2, prefix="777", width=7, issued=ISSUED)
    folder = tmp_path_factory.mktemp("fuzz-journal")
    counter = {"n": 0}

    @settings(max_examples=JOURNAL_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        counter["n"] += 1
        base = counter["n"] * 10
        good = [_good_row(base + i) for i in range(3)]
        bad = [data.draw(mutated_row(base + 5 + i)) for i in range(data.draw(st.integers(1, 3)))]
        lines = [JOURNAL_HEADER, good[0], *bad[:1], good[1], *bad[1:], good[2]]
        path = Path(folder) / f"f{counter['n']}.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary = JournalImport(db).import_file(path)
        assert summary.rows == summary.applied + summary.already + summary.rejected
        assert summary.applied >= len(good), (summary, lines)  # the untouched rows all went in
        assert summary.rows >= len(good)

    run()
    assert Reports(db).verify() == []
