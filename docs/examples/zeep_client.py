#!/usr/bin/env python3
"""KKMTransfer from a cash register's point of view, with zeep.

A walk through the calls a register makes, against a running server:

  1. read the card (GetCardInfo);
  2. register a sale that credits bonuses (RegisterOperation, Kind Sale);
  3. send the very same operation again, as a register does after a timeout: AlreadyApplied;
  4. register a second sale that spends bonuses;
  5. return part of the second sale (Kind Return, OriginalOperationId);
  6. try to spend more than the balance and read the fault code (Client.InsufficientBonus);
  7. print today's history of the card (GetCardOperations).

Run it against `make run` (`kkmtransfer demo` + `kkmtransfer serve`) with the defaults:

    .venv/bin/python docs/examples/zeep_client.py

or against any server:

    python zeep_client.py --url http://host:8080/KKMTransfer --user kassa7 --password ... --card 2000123

Every run writes new operations (fresh OperationIds) to the card. The script exits 0 when every answer
was the expected one, 1 when one was not, 2 when the server could not be reached.

Only zeep, requests and the standard library are used.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import requests
from requests.auth import HTTPBasicAuth
from zeep import Client
from zeep.exceptions import Fault, TransportError
from zeep.transports import Transport

NAMESPACE = "urn:kkmtransfer:1"
BINDING = "{%s}KKMTransfer" % NAMESPACE
BUSINESS_TIME_ZONE = "Europe/Moscow"

# The amounts of this walk-through. tests/test_docs_example.py computes the card's final balance
# from these same numbers.
SALE1_SUM = Decimal("1000.00")
SALE1_ACCRUED = Decimal("50.00")
SALE1_SPENT = Decimal("0.00")

SALE2_SUM = Decimal("500.00")
SALE2_ACCRUED = Decimal("20.00")
SALE2_SPENT = Decimal("30.00")

RETURN_SUM = Decimal("200.00")       # part of sale 2 comes back
RETURN_ACCRUED = Decimal("8.00")     # bonuses that sale 2 credited and the return takes back
RETURN_SPENT = Decimal("12.00")      # bonuses that sale 2 spent and the return gives back

OVERDRAFT = Decimal("1000.00")       # step 6 asks for the balance plus this much

KKM = "KKM-DEMO-01"
STORE = "S-001"


class UnexpectedAnswer(Exception):
    """The server answered, but not what this walk-through expects."""


def business_zone():
    """The server's business time zone, for dates such as "today" in GetCardOperations.

    zoneinfo needs the system's time zone database (on Windows: the tzdata package). Without it, use
    Moscow's fixed offset, +03:00 all year since 2014.
    """
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(BUSINESS_TIME_ZONE)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, or no zoneinfo at all
        return timezone(timedelta(hours=3), "MSK")


def connect(url: str, user: str, password: str):
    """A zeep service proxy for the endpoint ``url``, authenticating with HTTP Basic.

    The WSDL is read from ``url?wsdl`` (it needs no credentials; sending them does no harm). The calls go
    to ``url`` itself, not to the address written in the WSDL, so the client works behind proxies and
    port forwards too.
    """
    session = requests.Session()
    session.auth = HTTPBasicAuth(user, password)
    # timeout: reading the WSDL; operation_timeout: each SOAP call.
    transport = Transport(session=session, timeout=10, operation_timeout=15)
    client = Client(url + "?wsdl", transport=transport)
    return client.create_service(BINDING, url)


def fault_code(fault: Fault) -> str:
    """``Client.InsufficientBonus`` and the like: the faultcode is a QName (``soap11env:Client.InsufficientBonus``);
    compare the part after the last colon."""
    return (fault.code or "").split(":")[-1]


def now_aware() -> datetime:
    """The time a receipt closed: timezone-aware (a time without an offset is refused), whole seconds."""
    return datetime.now(business_zone()).replace(microsecond=0)


def register(service, operation: dict, attempts: int = 3):
    """RegisterOperation, retried on a timeout or a lost connection with the *same* operation.

    The same OperationId with the same contents applies once: a retry of a call that did reach the
    server returns AlreadyApplied and changes nothing. SOAP faults are answers, never retried here.
    """
    for attempt in range(1, attempts + 1):
        try:
            return service.RegisterOperation(Operation=operation)
        except (requests.Timeout, requests.ConnectionError) as exc:
            if attempt == attempts:
                raise
            print(f"  (no answer: {exc.__class__.__name__}; retrying the same OperationId)")
            time.sleep(attempt)
    raise AssertionError("unreachable")


def sale(card: str, receipt_number: str, receipt_sum: Decimal, accrued: Decimal, spent: Decimal) -> dict:
    return {
        "OperationId": str(uuid.uuid4()),  # made by the register, written to its journal too
        "CardNumber": card,
        "KKM": KKM,
        "Store": STORE,
        "ReceiptNumber": receipt_number,
        "OperationTime": now_aware(),
        "Kind": "Sale",
        "ReceiptSum": receipt_sum,
        "BonusAccrued": accrued,
        "BonusSpent": spent,
        # AccumulationDelta (default +ReceiptSum) and ReceiptCountDelta (default +1) are left out.
    }


def show_card(label: str, info) -> None:
    expiry = ""
    if info.NextExpiryDate is not None:
        expiry = f", {info.NextExpiryAmount} burn on {info.NextExpiryDate}"
    print(f"{label}: card {info.CardNumber} ({info.Status}, holder {info.Holder or '-'})")
    print(f"    bonus {info.BonusBalance} (pending {info.BonusPending}){expiry}")
    print(f"    accumulation {info.Accumulation} (pending {info.AccumulationPending}), "
          f"receipts {info.ReceiptCount} (pending {info.ReceiptCountPending})")


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise UnexpectedAnswer(message)


def walk_through(service, card: str) -> None:
    # 1. Read the card.
    info = service.GetCardInfo(CardNumber=card)
    show_card("1. GetCardInfo", info)
    expect(info.Status == "Active", f"card {card} is {info.Status}; use an active card")
    start_balance = info.BonusBalance

    # 2. A sale that credits bonuses.
    first = sale(card, "R-1001", SALE1_SUM, SALE1_ACCRUED, SALE1_SPENT)
    result = register(service, first)
    print(f"2. Sale {first['OperationId']}: {result.Status}, balance now {result.Card.BonusBalance}")
    expect(result.Status == "Applied", f"the first send of a new operation answered {result.Status}")

    # 3. The very same operation again (same OperationId, same contents): nothing changes.
    again = register(service, first)
    print(f"3. Same Sale sent again: {again.Status}, balance still {again.Card.BonusBalance}")
    expect(again.Status == "AlreadyApplied", f"the repeated operation answered {again.Status}")
    expect(again.Card.BonusBalance == result.Card.BonusBalance, "a repeated operation changed the balance")

    # 4. A second sale that spends bonuses (and credits some for the rest of the receipt).
    second = sale(card, "R-1002", SALE2_SUM, SALE2_ACCRUED, SALE2_SPENT)
    result = register(service, second)
    print(f"4. Sale {second['OperationId']}: spent {SALE2_SPENT}, accrued {SALE2_ACCRUED}: "
          f"{result.Status}, balance now {result.Card.BonusBalance}")
    expect(result.Status == "Applied", f"the second sale answered {result.Status}")

    # 5. Part of the second sale comes back. The return names its sale; it gives back spent bonuses
    #    (to the lots they came from) and takes back accrued ones.
    refund = {
        "OperationId": str(uuid.uuid4()),
        "CardNumber": card,
        "KKM": KKM,
        "Store": STORE,
        "ReceiptNumber": "R-1003",
        "OperationTime": now_aware(),
        "Kind": "Return",
        "ReceiptSum": RETURN_SUM,
        "BonusAccrued": RETURN_ACCRUED,  # taken back
        "BonusSpent": RETURN_SPENT,      # given back
        "OriginalOperationId": second["OperationId"],
        # AccumulationDelta defaults to -ReceiptSum, ReceiptCountDelta to 0.
    }
    result = register(service, refund)
    print(f"5. Return {refund['OperationId']} of sale {second['OperationId']}: gave back {RETURN_SPENT}, "
          f"took back {RETURN_ACCRUED}: {result.Status}, balance now {result.Card.BonusBalance}")
    expect(result.Status == "Applied", f"the return answered {result.Status}")
    balance = result.Card.BonusBalance

    # 6. A fault: spending more than the balance. Nothing is written.
    greedy = sale(card, "R-1004", Decimal("5000.00"), Decimal("0.00"), balance + OVERDRAFT)
    try:
        register(service, greedy)
    except Fault as fault:
        code = fault_code(fault)
        print(f"6. Spending {greedy['BonusSpent']} with {balance} on the card: fault {code}: {fault.message}")
        expect(code == "Client.InsufficientBonus", f"expected Client.InsufficientBonus, got {code}")
    else:
        raise UnexpectedAnswer("spending more than the balance was accepted")

    # 7. Today's history, oldest first. Dates are days in the business time zone, both inclusive.
    #    (DateFrom is the day of the first sale, which is today unless this run crossed midnight.)
    today: date = datetime.now(business_zone()).date()
    since: date = first["OperationTime"].date()
    records = service.GetCardOperations(CardNumber=card, DateFrom=since, DateTo=today) or []
    print(f"7. GetCardOperations {since}..{today}: {len(records)} record(s)")
    for r in records:
        print(f"    {r.Time.isoformat()}  {r.Kind:<8} {r.Source:<7} KKM {r.KKM or '-'} "
              f"receipt {r.ReceiptNumber or '-':<7} bonus {r.Bonus:>+9} "
              f"accumulation {r.Accumulation:>+10} receipts {r.ReceiptCount:+d}  id {r.OperationId}")
    ids = {r.OperationId for r in records}
    mine = {first["OperationId"], second["OperationId"], refund["OperationId"]}
    expect(mine <= ids, "today's history lacks an operation this run registered")
    expect(greedy["OperationId"] not in ids, "the refused operation is in the history")

    info = service.GetCardInfo(CardNumber=card)
    show_card("Finally", info)
    change = SALE1_ACCRUED - SALE1_SPENT + SALE2_ACCRUED - SALE2_SPENT - RETURN_ACCRUED + RETURN_SPENT
    expect(info.BonusBalance == start_balance + change,
           f"balance {info.BonusBalance}, expected {start_balance} {change:+}")
    print(f"Bonus balance went from {start_balance} to {info.BonusBalance} ({change:+}).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="KKMTransfer walk-through with zeep (see docs/integration.md).")
    parser.add_argument("--url", default="http://127.0.0.1:8080/KKMTransfer", help="the SOAP endpoint")
    parser.add_argument("--user", default="kassa1", help="the register's user (HTTP Basic)")
    parser.add_argument("--password", default="kassa1-demo-pass", help="its password")
    parser.add_argument("--card", default="7770000001", help="an active card number")
    args = parser.parse_args(argv)

    try:
        service = connect(args.url, args.user, args.password)
        walk_through(service, args.card)
    except UnexpectedAnswer as exc:
        print(f"UNEXPECTED: {exc}", file=sys.stderr)
        return 1
    except Fault as fault:
        print(f"SOAP fault {fault_code(fault)}: {fault.message}", file=sys.stderr)
        return 1
    except TransportError as exc:  # an HTTP error other than a SOAP fault, e.g. 401
        print(f"HTTP {exc.status_code} from {args.url}: {exc.message}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
