"""Keep patient data out of the logs that libraries write on NormGate's behalf.

pydicom validates element values as it reads and writes them and reports a bad one through both its
``pydicom`` logger and ``warnings.warn`` — quoting the value: ``Invalid value for VR DA: '03/02/1961'`` is a
birth date in the server log. NormGate's own log lines name request ids and SOP Instance UIDs only
(docs/integration.md, PHI policy); this module makes the library's lines match: quoted values are replaced by
``<redacted>`` in the ``pydicom`` logger's records, and pydicom's duplicate warnings (which would reach stderr
unfiltered) are silenced. Installed once per process from the app's lifespan; idempotent.
"""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["RedactQuotedValues", "install_dicom_log_redaction", "redact"]

# pydicom quotes values with repr() ('…' or "…") or as "Value \"…\" is not valid …".
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|b'(?:[^'\\]|\\.)*'")


def redact(text: str) -> str:
    return _QUOTED.sub("<redacted>", text)


class RedactQuotedValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        return True


def install_dicom_log_redaction() -> None:
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, RedactQuotedValues) for f in logger.filters):
        logger.addFilter(RedactQuotedValues())
    # The same messages again as UserWarnings attributed to pydicom modules; the log line above is enough.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
