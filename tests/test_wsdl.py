"""The served WSDL is the checked-in one, and it carries the contract's names."""
from __future__ import annotations

from pathlib import Path

import requests
from lxml import etree

from kkmtransfer.soap.wsdl import build_wsdl, normalise

CHECKED_IN = Path(__file__).resolve().parent.parent / "wsdl" / "KKMTransfer.wsdl"
NS = {"wsdl": "http://schemas.xmlsoap.org/wsdl/", "xs": "http://www.w3.org/2001/XMLSchema",
      "soap": "http://schemas.xmlsoap.org/wsdl/soap/"}


def test_served_wsdl_matches_the_checked_in_file(server):
    served = requests.get(server + "?wsdl", timeout=10)
    assert served.status_code == 200
    assert normalise(served.content) == normalise(CHECKED_IN.read_bytes()), (
        "the served WSDL drifted from wsdl/KKMTransfer.wsdl: run `make wsdl` and review the diff")


def test_make_wsdl_reproduces_the_checked_in_file_byte_for_byte():
    assert build_wsdl() == CHECKED_IN.read_bytes(), "run `make wsdl`"


def test_wsdl_has_the_contract_names():
    doc = etree.fromstring(CHECKED_IN.read_bytes())
    assert doc.get("targetNamespace") == "urn:kkmtransfer:1"
    [schema] = doc.findall(".//xs:schema", NS)
    assert schema.get("elementFormDefault") == "qualified"
    [service] = doc.findall("wsdl:service", NS)
    assert service.get("name") == "KKMTransfer" and len(service.findall("wsdl:port", NS)) == 1
    assert service.find("wsdl:port/soap:address", NS).get("location").endswith("/KKMTransfer")
    ops = {o.get("name") for o in doc.findall("wsdl:portType/wsdl:operation", NS)}
    assert ops == {"GetCardInfo", "FindCardByPhone", "RegisterOperation", "GetCardOperations"}

    def sequence(type_name):
        [ct] = schema.xpath(f"xs:complexType[@name='{type_name}']", namespaces=NS)
        return [e.get("name") for e in ct.findall("xs:sequence/xs:element", NS)]

    assert sequence("Operation") == [
        "OperationId", "CardNumber", "KKM", "Store", "ReceiptNumber", "OperationTime", "Kind", "ReceiptSum",
        "BonusAccrued", "BonusSpent", "AccumulationDelta", "ReceiptCountDelta", "PromotionCode",
        "OriginalOperationId"]
    assert sequence("CardInfo") == [
        "CardNumber", "Status", "Holder", "BonusBalance", "BonusPending", "NextExpiryDate", "NextExpiryAmount",
        "Accumulation", "AccumulationPending", "ReceiptCount", "ReceiptCountPending"]
    assert sequence("OperationResult") == ["OperationId", "Status", "Card"]
    assert sequence("OperationRecord") == [
        "OperationId", "Time", "Kind", "Source", "KKM", "ReceiptNumber", "Bonus", "Accumulation", "ReceiptCount"]
    assert sequence("GetCardOperations") == ["CardNumber", "DateFrom", "DateTo"]
    assert sequence("RegisterOperation") == ["Operation"]
    assert sequence("RegisterOperationResponse") == ["RegisterOperationResult"]


def test_the_wsdl_address_is_the_one_each_client_used(server):
    port = server.split(":")[2].split("/")[0]
    first = requests.get(server + "?wsdl", headers={"Host": f"kkm.example.org:{port}"}, timeout=10)
    second = requests.get(server + "?wsdl", timeout=10)
    loc = "{http://schemas.xmlsoap.org/wsdl/soap/}address"
    assert next(etree.fromstring(first.content).iter(loc)).get("location") == \
        f"http://kkm.example.org:{port}/KKMTransfer"
    assert next(etree.fromstring(second.content).iter(loc)).get("location") == server
