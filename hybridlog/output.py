"""How the command line prints values: one encoding of blobs (payloads, hashes) in every format.

A blob is printed as its text when it is valid UTF-8, and otherwise in an explicit binary form,
the one sqlite-utils uses: the JSON object ``{"$base64": true, "encoded": "<base64 of the bytes>"}``.
In JSON and JSON Lines that object is the value; in a CSV or table cell it is the same object
written as JSON text. So ``b"c\\xff"`` prints as ``{"$base64": true, "encoded": "Y/8="}`` and
``b"caf\\xc3\\xa9"`` as ``café``. A JSON reader tells the two apart by type (an object is never
text); in a CSV or table cell, text that happens to spell that object looks the same.
README.md ("Payloads and JSON") and docs/sql.md document it.
"""

from __future__ import annotations

import base64
import json

BASE64_KEY = "$base64"


def json_value(value: object) -> object:
    """``value`` ready for ``json.dumps``: a blob becomes its UTF-8 text, or, when it is not valid
    UTF-8, ``{"$base64": True, "encoded": ...}``; anything else is returned as it is."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return {BASE64_KEY: True, "encoded": base64.b64encode(data).decode("ascii")}
    return value


def text_value(value: object, *, null: str = "") -> str:
    """``value`` as the text of one CSV or table cell: ``null`` for NULL, a blob as in JSON (its
    text, or the ``$base64`` object as JSON text), anything else as ``str``."""
    if value is None:
        return null
    encoded = json_value(value)
    return json.dumps(encoded) if isinstance(encoded, dict) else str(encoded)
