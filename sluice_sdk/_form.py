"""What the sealing transport needs of a multipart form (the audio routes): its model and stream flag.

The form itself is sealed whole, with its own Content-Type (its boundary) in
the sealed inner request; the gate parses it strictly.  Here the stdlib
``email`` parser only finds the two fields that travel in the clear
(``Sluice-Model``) or choose the seal kind (chunked for ``stream``).
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Final

__all__ = ["FORM_MEDIA_TYPE", "form_model_and_stream"]

FORM_MEDIA_TYPE: Final = "multipart/form-data"


def form_model_and_stream(content_type: str, content: bytes) -> tuple[str | None, bool]:
    """``(model or None, streaming)`` of a ``multipart/form-data`` body."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + content)
    if not message.is_multipart():
        return None, False
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and name in ("model", "stream") and isinstance(payload, bytes) and name not in fields:
            fields[name] = payload
    model = fields.get("model")
    try:
        text = model.decode("ascii") if model is not None else None
    except UnicodeDecodeError:
        text = None
    return text, fields.get("stream") == b"true"
