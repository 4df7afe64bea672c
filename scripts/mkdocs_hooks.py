"""MkDocs hook for the docs site (``mkdocs.yml``: ``hooks``).

The package's docstrings use Sphinx roles (``:func:`segment```) so they read well in ``help()``;
mkdocstrings renders them as Markdown, where a role would show as literal ``:func:`` text before
the code span. This hook drops the role and keeps the code span.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):(?=<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """Remove Sphinx role prefixes in front of inline code in a rendered page."""
    return _ROLE.sub("", html)
