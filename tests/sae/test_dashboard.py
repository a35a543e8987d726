"""The offline dashboard: every feature, its contexts and logit effects, nothing external."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmscope.sae import build_sae
from lmscope.sae.dashboard import write_dashboard
from lmscope.sae.features import collect_features
from lmscope.tokenizers import CharTokenizer
from tests.sae.tiny import HOOK, tiny_model, token_stream


def embedded(page: str) -> dict:
    match = re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
    assert match
    return json.loads(match.group(1))


def test_dashboard_holds_every_feature_offline_and_escapes_tokens(tmp_path: Path) -> None:
    model = tiny_model()
    # 60 characters and one special token whose name is HTML that must not break the page.
    tokenizer = CharTokenizer([chr(48 + i) for i in range(60)], special_tokens=["</script>"])
    rows = token_stream(16 * 10, seed=7).reshape(16, 10)
    rows[:, 4] = 60
    sae = build_sae(d_in=32, d_sae=20, arch="standard", hook_name=HOOK, seed=2)
    stats = collect_features(model, sae, rows, k=3, window=(4, 2), exclude_special=False)
    path = write_dashboard(stats, tmp_path / "sae.html", tokenizer=tokenizer, title="tiny <SAE>")
    page = path.read_text(encoding="utf-8")
    # Offline: no URL of any kind, no external resource.
    assert "http:" not in page and "https:" not in page and "//cdn" not in page
    assert not re.search(r"\b(src|href)\s*=", page) and "@import" not in page
    assert page.count("</script>") == 2  # the data block and the code, nothing injected
    assert "<title>tiny &lt;SAE&gt;</title>" in page
    data = embedded(page)
    assert [f["id"] for f in data["features"]] == list(range(20))
    assert data["tokens"]["60"] == "</script>"
    for f in data["features"]:
        examples = stats.top_examples(f["id"])
        assert len(f["top"]) == len(examples)
        for (tokens, acts, top, context), e in zip(f["top"], examples, strict=True):
            assert tokens == e.tokens and context == e.context
            assert top == float(f"{e.max_act:.4g}")
            assert max(acts) == top
        effect = stats.logit_effect(f["id"])
        assert [t for t, _ in f["promoted"]] == [t for t, _ in effect["promoted"]]
        assert f["density"] == float(stats.density[f["id"]])
        for token in f["peaks"]:
            assert str(token) in data["tokens"]
