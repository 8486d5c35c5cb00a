"""The one CSV writer of the console: every table's "Скачать CSV" is a server-side download of all its
rows (not only the page shown), written the way `kkmtransfer ... --csv` writes files: ';'-separated,
UTF-8, numbers machine-readable (``1234.50``, no thousands separator), times ISO 8601."""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from flask import Response


def csv_text(header: list[str], rows: Iterable[list]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def csv_response(filename: str, header: list[str], rows: Iterable[list]) -> Response:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in filename)
    return Response(csv_text(header, rows).encode("utf-8"), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{safe}"'})
