"""What a diff shows of a file's content: shared by the files module (the old text) and its action
plugin (the new text, which the module's no_log output cannot carry)."""
from __future__ import annotations

DIFF_LIMIT = 64 * 1024  # larger files are reported as changed without their text


def text_for_diff(content: bytes, secret: bool) -> str:
    if secret:
        return "(secret content not shown)\n"
    if len(content) > DIFF_LIMIT:
        return f"({len(content)} bytes, not shown)\n"
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(content)} bytes of binary content)\n"
