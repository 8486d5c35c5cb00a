"""What every request meets before spyne, and the faults written without spyne.

``inspect_envelope`` parses the request once with lxml (no DTD, no entities, no network) and refuses what
SOAP 1.1 or the contract forbids, with the fault SOAP names for it: a SOAP 1.2 envelope (``VersionMismatch``),
a Header entry this service must understand but does not (``MustUnderstand``), an empty Body or more than
one operation in it, elements outside the service's namespace, and documents with more elements or
attributes than the configured limits (spyne's parser is quadratic in them). ``fault_envelope`` writes a
SOAP 1.1 fault with an XML serializer, so whatever the text holds, the answer is well-formed.
"""
from __future__ import annotations

import re

from lxml import etree

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
NS = "urn:kkmtransfer:1"
ACTOR_NEXT = "http://schemas.xmlsoap.org/soap/actor/next"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# characters XML 1.0 cannot carry at all
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class SoapFault(Exception):
    """A fault decided before spyne: ``code`` is the bare code (``Client.ValidationError``)."""

    def __init__(self, code: str, string: str):
        super().__init__(string)
        self.code = code
        self.string = string


def xml_text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def fault_envelope(code: str, string: str) -> bytes:
    """A SOAP 1.1 fault; the faultcode is a QName in the envelope namespace (``soap:Server``)."""
    env = etree.Element(f"{{{SOAP11_ENV}}}Envelope", nsmap={"soap": SOAP11_ENV})
    body = etree.SubElement(env, f"{{{SOAP11_ENV}}}Body")
    fault = etree.SubElement(body, f"{{{SOAP11_ENV}}}Fault")
    etree.SubElement(fault, "faultcode").text = f"soap:{code}"
    etree.SubElement(fault, "faultstring").text = xml_text(string)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                           remove_comments=True, remove_pis=True)


def _local(tag) -> str:
    return etree.QName(tag).localname


def _ns(tag) -> str | None:
    return etree.QName(tag).namespace


def inspect_envelope(body: bytes, max_elements: int, max_attributes: int) -> str:
    """Raise ``SoapFault`` for what must not reach spyne; for a plausible request return the operation
    element's local name."""
    if not body.strip():
        raise SoapFault("Client.ValidationError", "the request body is empty: a SOAP 1.1 Envelope is required")
    try:
        root = etree.fromstring(body, _parser())
    except etree.XMLSyntaxError as exc:
        raise SoapFault("Client.ValidationError", f"the request is not well-formed XML: {str(exc)[:200]}")
    if root.getroottree().docinfo.doctype:
        raise SoapFault("Client.ValidationError", "a SOAP message must not contain a Document Type Declaration")
    elements = attributes = 0
    for el in root.iter():
        elements += 1
        attributes += len(el.attrib)
        if elements > max_elements:
            raise SoapFault("Client.ValidationError",
                            f"the request has more than {max_elements} elements, the limit")
        if attributes > max_attributes:
            raise SoapFault("Client.ValidationError",
                            f"the request has more than {max_attributes} attributes, the limit")
    if _local(root.tag) == "Envelope" and _ns(root.tag) != SOAP11_ENV:
        # SOAP 1.1 §4.4.1: an Envelope in another namespace (SOAP 1.2's included) is a version mismatch
        raise SoapFault("VersionMismatch",
                        f"this endpoint speaks SOAP 1.1: the Envelope must be in {SOAP11_ENV}, "
                        f"got {_ns(root.tag) or 'no namespace'}")
    if root.tag != f"{{{SOAP11_ENV}}}Envelope":
        raise SoapFault("Client.ValidationError", f"the root element must be the SOAP 1.1 Envelope, "
                                                  f"got {_local(root.tag)[:64]}")
    header = root.find(f"{{{SOAP11_ENV}}}Header")
    if header is not None:
        for entry in header:
            must = (entry.get(f"{{{SOAP11_ENV}}}mustUnderstand") or "").strip()
            actor = entry.get(f"{{{SOAP11_ENV}}}actor")
            if must in ("1", "true") and actor in (None, "", ACTOR_NEXT):
                raise SoapFault("MustUnderstand",
                                f"the header entry {etree.QName(entry.tag).text[:200]} is marked mustUnderstand "
                                "but this service does not process any header entries")
    soap_body = root.find(f"{{{SOAP11_ENV}}}Body")
    if soap_body is None:
        raise SoapFault("Client.ValidationError", "Body: required")
    ops = list(soap_body)
    if not ops:
        raise SoapFault("Client.ValidationError", "Body: required: one operation element, got an empty Body")
    if len(ops) > 1:
        names = ", ".join(_local(op.tag)[:64] for op in ops[:5])
        raise SoapFault("Client.ValidationError",
                        f"Body: exactly one operation element allowed, got {len(ops)} ({names})")
    if ops[0].get(f"{{{XSI}}}nil") is not None:
        raise SoapFault("Client.ValidationError",
                        f"{_local(ops[0].tag)[:64]}: the operation element must not be nil (xsi:nil)")
    for el in ops[0].iter():
        if _ns(el.tag) != NS:
            raise SoapFault("Client.ValidationError",
                            f"{_local(el.tag)[:64]}: must be in the namespace {NS} "
                            f"(elementFormDefault=qualified), got {_ns(el.tag) or 'no namespace'}")
    return _local(ops[0].tag)
