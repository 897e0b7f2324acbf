#!/usr/bin/env python3
"""Regenerate the key reference tables in docs/CONFIGURATION.md from the schema.

The tables sit between two HTML comment markers; the prose around them is kept. Run
after changing src/apigate/config/schema.py (tests/unit/test_config_docs.py fails
until you do):

    .venv/bin/python scripts/config_reference.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from apigate.config.keys import BEGIN_MARK, END_MARK, reference_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "CONFIGURATION.md"


def main() -> int:
    text = DOC.read_text(encoding="utf-8")
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if start < 0 or end < start:
        print(f"{DOC}: markers not found; add these two lines where the tables go:", file=sys.stderr)
        print(f"{BEGIN_MARK}\n{END_MARK}", file=sys.stderr)
        return 1
    updated = text[:start] + reference_markdown() + text[end + len(END_MARK) :]
    if updated != text:
        DOC.write_text(updated, encoding="utf-8")
        print(f"updated {DOC}")
    else:
        print(f"{DOC} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
