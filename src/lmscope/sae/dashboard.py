"""A static feature dashboard: one self-contained HTML file per SAE that works offline.

`write_dashboard(stats, path, tokenizer=...)` writes everything `collect_features`
found into a single ``.html`` file: inline CSS and JavaScript, no CDN, no fonts or
images from elsewhere, so it opens from a laptop, a mail attachment or an air-gapped
machine. The feature data is embedded once as JSON (token ids, activations rounded to
4 significant digits, and the text of each token used) and the page builds a
feature's view when it is opened, so even tens of thousands of features stay a few
megabytes and open instantly.

The page: a list of every feature (density, strongest activation, top promoted tokens)
that can be sorted and filtered by a token (a feature matches when the token is where
its top contexts peak, or among the tokens it promotes); per feature, its top
contexts and quantile samples with each token shaded by the feature's activation (the
value on hover), and its logit effects.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lmscope.errors import LmscopeError
from lmscope.sae.features import PAD, Example, FeatureStats
from lmscope.serialization import atomic_write
from lmscope.tokenizers import Tokenizer


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def _example(e: Example, used: set[int]) -> list[Any]:
    used.update(t for t in e.tokens if t != PAD)
    return [e.tokens, [_round(a) for a in e.acts], _round(e.max_act), e.context]


def dashboard_data(stats: FeatureStats, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """The JSON the page embeds: features (contexts, quantiles, logit effects) and token text."""
    used: set[int] = set()
    features = []
    for row, f in enumerate(stats.features):
        top = stats.top_examples(f)
        logits = stats.logit_effect(f)
        for kind in ("promoted", "suppressed"):
            used.update(t for t, _ in logits[kind])
        features.append(
            {
                "id": f,
                "density": float(stats.density[row]),
                "max": _round(top[0].max_act) if top else 0.0,
                "peaks": sorted({e.tokens[e.peak] for e in top}),
                "top": [_example(e, used) for e in top],
                "quantiles": [
                    [_round(lo), _round(hi), [_example(e, used) for e in examples]]
                    for lo, hi, examples in stats.quantile_samples(f)
                ],
                "promoted": [[t, _round(v)] for t, v in logits["promoted"]],
                "suppressed": [[t, _round(v)] for t, v in logits["suppressed"]],
            }
        )
    return {
        "hook": stats.hook_name,
        "n_tokens": stats.n_tokens,
        "tokens": {str(t): _token_text(t, tokenizer) for t in sorted(used)},
        "features": features,
    }


def _token_text(token: int, tokenizer: Tokenizer | None) -> str:
    if tokenizer is None:
        return f"<{token}>"
    try:
        return tokenizer.decode([token])
    except LmscopeError:  # a token decode refuses: show its vocabulary entry
        return tokenizer.id_to_token(token)


def render_dashboard(
    stats: FeatureStats, *, tokenizer: Tokenizer | None = None, title: str = "SAE features"
) -> str:
    """The dashboard page as one HTML string (see the module docstring)."""
    data = json.dumps(dashboard_data(stats, tokenizer), separators=(",", ":"))
    # Inside <script>, "</script" would close the element and "<!--" open a comment;
    # as JSON escapes these characters stay the same strings once parsed.
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def write_dashboard(
    stats: FeatureStats,
    path: str | Path,
    *,
    tokenizer: Tokenizer | None = None,
    title: str = "SAE features",
) -> Path:
    """Write `render_dashboard`'s page to `path` (atomically); returns the path."""
    out = Path(path)
    page = render_dashboard(stats, tokenizer=tokenizer, title=title)
    atomic_write(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:10px 16px;background:#24324a;color:#fff}
header h1{font-size:18px;margin:0}
main{display:flex;height:calc(100vh - 64px)}
#side{width:340px;overflow:auto;border-right:1px solid #ddd;background:#fff}
#detail{flex:1;overflow:auto;padding:12px 20px}
#controls{padding:8px;position:sticky;top:0;background:#fff;border-bottom:1px solid #eee}
#controls input{width:60%}
table{border-collapse:collapse;width:100%}
td,th{padding:3px 6px;text-align:left;border-bottom:1px solid #f0f0f0;font-size:13px}
tr.f{cursor:pointer} tr.f:hover,tr.sel{background:#e8f0fb}
.ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;margin:3px 0;padding:4px;
background:#fff;border:1px solid #eee}
.tok{border-radius:2px}
.pk{outline:1px solid #c33}
.muted{color:#888} .num{font-variant-numeric:tabular-nums}
.pos{color:#1a6d2f} .neg{color:#a12424}
h2{font-size:16px} h3{font-size:14px;margin:14px 0 4px}
</style></head><body>
<header><h1>__TITLE__</h1><div id="meta" class="muted"></div></header>
<main><div id="side"><div id="controls">
<input id="search" placeholder="token, e.g. thee" aria-label="filter features by token">
<select id="sort"><option value="id">id</option><option value="density">density</option>
<option value="max">max act</option></select></div>
<table><thead><tr><th>#</th><th>log10 dens.</th><th>max</th><th>promotes</th></tr></thead>
<tbody id="list"></tbody></table></div>
<div id="detail"><p class="muted">Choose a feature on the left.</p></div></main>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const T = t => t === -1 ? "" : (D.tokens[t] ?? "<" + t + ">");
const esc = s => s.replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));
const show = s => esc(s).replace(/\\n/g, "\\u21b5\\n");
document.getElementById("meta").textContent =
  D.features.length + " features at " + D.hook + ", " + D.n_tokens.toLocaleString() + " tokens";
function context(ex, scale) {
  const [toks, acts, mx] = ex; let peak = acts.indexOf(Math.max(...acts)); let out = "";
  toks.forEach((t, i) => {
    if (t === -1) return;
    const a = Math.max(0, acts[i]) / (scale || mx || 1);
    out += `<span class="tok${i === peak ? " pk" : ""}" title="${acts[i]}" ` +
      `style="background:rgba(230,120,20,${Math.min(1, a).toFixed(3)})">${show(T(t))}</span>`;
  });
  return `<div class="ctx">${out}</div>`;
}
function logits(list, cls) {
  return list.map(([t, v]) => `<span class="${cls}">${show(T(t))}</span> ` +
    `<span class="muted num">${v}</span>`).join(", ") || '<span class="muted">n/a</span>';
}
function open(f) {
  document.querySelectorAll("tr.sel").forEach(r => r.classList.remove("sel"));
  const row = document.getElementById("r" + f.id); if (row) row.classList.add("sel");
  let h = `<h2>Feature ${f.id}</h2><p>density ${f.density.toExponential(3)} ` +
    `&middot; max activation ${f.max}</p><h3>Promotes</h3><p>${logits(f.promoted, "pos")}</p>` +
    `<h3>Suppresses</h3><p>${logits(f.suppressed, "neg")}</p><h3>Top contexts</h3>`;
  h += f.top.map(ex => context(ex, f.max)).join("") || '<p class="muted">never fired</p>';
  f.quantiles.slice().reverse().forEach(([lo, hi, exs]) => {
    h += `<h3>Activations ${lo} to ${hi}</h3>` + exs.map(ex => context(ex, f.max)).join("");
  });
  document.getElementById("detail").innerHTML = h;
  location.hash = "f" + f.id;
}
function render() {
  const q = document.getElementById("search").value;
  const key = document.getElementById("sort").value;
  let fs = D.features;
  if (q) fs = fs.filter(f => f.peaks.some(t => T(t).includes(q))
    || f.promoted.some(([t]) => T(t).includes(q)));
  if (key !== "id") fs = fs.slice().sort((a, b) => b[key] - a[key]);
  document.getElementById("list").innerHTML = fs.map(f =>
    `<tr class="f" id="r${f.id}" data-id="${f.id}"><td>${f.id}</td>` +
    `<td class="num">${f.density > 0 ? Math.log10(f.density).toFixed(2) : "dead"}</td>` +
    `<td class="num">${f.max}</td><td>${f.promoted.slice(0, 3).map(([t]) =>
      show(T(t))).join(" ")}</td></tr>`).join("");
}
document.getElementById("list").addEventListener("click", e => {
  const row = e.target.closest("tr.f");
  if (row) open(D.features.find(f => f.id === +row.dataset.id));
});
document.getElementById("search").addEventListener("input", render);
document.getElementById("sort").addEventListener("change", render);
render();
const start = D.features.find(f => "#f" + f.id === location.hash) || D.features[0];
if (start) open(start);
</script></body></html>
"""


__all__ = ["dashboard_data", "render_dashboard", "write_dashboard"]
