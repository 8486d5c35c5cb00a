"""The WSDL, built without a server: ``python -m kkmtransfer.soap.wsdl > wsdl/KKMTransfer.wsdl``."""
from __future__ import annotations

import sys

from lxml import etree
from spyne.interface.wsdl import Wsdl11

CHECKED_IN_URL = "http://localhost:8080/KKMTransfer"


def build_wsdl(url: str = CHECKED_IN_URL) -> bytes:
    from .service import make_soap_app

    app = make_soap_app(billing=None).app
    wsdl = Wsdl11(app.interface)
    wsdl.build_interface_document(url)
    return pretty(wsdl.get_interface_document())


XS = "{http://www.w3.org/2001/XMLSchema}"


def _sorted(root):
    """spyne emits the schema's types in hash order; sort them (and the WSDL's top-level items) by kind
    and name so that the same service always gives the same document."""
    def key(el):
        return (str(el.tag), el.get("name", ""))

    for parent in [root, *root.iter(XS + "schema")]:
        children = list(parent)
        leading = [c for c in children if c.tag in (XS + "import", "{http://schemas.xmlsoap.org/wsdl/}types")]
        rest = sorted((c for c in children if c not in leading), key=key)
        parent[:] = leading + rest
    return root


def _drop_unused_namespaces(root):
    """spyne declares every namespace it knows (SOAP 1.2's among them: gSOAP's wsdl2h then generates a
    SOAP 1.2 client). Keep only the prefixes used in a name or in a QName value (type="tns:Money")."""
    in_values = set()
    for el in root.iter():
        for value in el.attrib.values():
            prefix, sep, rest = value.partition(":")
            if sep and not rest.startswith("//") and prefix in (el.nsmap or {}):
                in_values.add(prefix)
    etree.cleanup_namespaces(root, keep_ns_prefixes=sorted(in_values))
    return root


def pretty(document: bytes) -> bytes:
    parser = etree.XMLParser(remove_blank_text=True)
    root = _drop_unused_namespaces(_sorted(etree.fromstring(document, parser)))
    return etree.tostring(root, pretty_print=True, xml_declaration=True, encoding="UTF-8")


def normalise(document: bytes) -> bytes:
    """Canonical XML with the endpoint address blanked: what must not drift between served and checked in."""
    root = _sorted(etree.fromstring(document, etree.XMLParser(remove_blank_text=True)))
    for el in root.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address"):
        el.set("location", "ENDPOINT")
    return etree.tostring(root, method="c14n")


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.buffer.write(build_wsdl())
