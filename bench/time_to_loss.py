"""Time to loss on tiny Shakespeare: nanoGPT's CPU recipe vs lmscope's CPU recipes.

nanoGPT's README trains a baby GPT on a CPU with::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
        --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
        --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

and reaches val loss ~1.886 after 2,000 iterations. This script runs that exact command
(from a nanoGPT checkout you point it at with ``--nanogpt``; nothing is downloaded) and
lmscope's recipes on the same text with the same 90/10 split, one after the other and
alternating across ``--rounds``, and reports for each the wall time from process start
to the first evaluation at or below the target (default 1.886): start-up, data
preparation and evaluations count for both. lmscope runs stop at the target
(``stop_at_val_loss``); nanoGPT runs are stopped once their log shows it.

``--make-run`` adds the `make run` recipe (``shakespeare``) pointed at the same file,
with its 5-minute budget, and reports when it reaches val 1.70 and where it ends.

Run: ``python bench/time_to_loss.py --nanogpt /path/to/nanoGPT --json ttl.json``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_ARGS = [
    "config/train_shakespeare_char.py",
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
_NANOGPT_EVAL = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
_NANOGPT_ITER = re.compile(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms")


def nanogpt_workdir(checkout: Path, data: Path, work: Path) -> Path:
    """A scratch copy of nanoGPT's training script with `data` prepared its way."""
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(checkout / name, work / name)
    shutil.copytree(checkout / "config", work / "config")
    target = work / "data" / "shakespeare_char"
    target.mkdir(parents=True)
    # prepare.py downloads input.txt only when it is missing: give it ours.
    shutil.copy(data, target / "input.txt")
    shutil.copy(checkout / "data" / "shakespeare_char" / "prepare.py", target / "prepare.py")
    subprocess.run(
        [sys.executable, "prepare.py"], cwd=target, check=True, capture_output=True, text=True
    )
    return work


def run_nanogpt(work: Path, target: float, max_iters: int, extra: list[str]) -> dict[str, Any]:
    """nanoGPT's CPU recipe until its log shows val <= target (or it ends)."""
    out_dir = work / f"out-{time.time_ns()}"
    args = [
        a if not a.startswith("--max_iters") else f"--max_iters={max_iters}" for a in NANOGPT_ARGS
    ]
    args = [a if not a.startswith("--lr_decay") else f"--lr_decay_iters={max_iters}" for a in args]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-u", "train.py", *args, *extra, f"--out_dir={out_dir}"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    evals, iter_ms, reached = [], [], None
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - start
        if m := _NANOGPT_ITER.search(line):
            iter_ms.append(float(m.group(2)))
        if m := _NANOGPT_EVAL.search(line):
            step, val = int(m.group(1)), float(m.group(3))
            evals.append({"step": step, "val_loss": val, "wall_s": now})
            if val <= target and reached is None:
                reached = evals[-1]
                proc.terminate()
                break
    proc.wait()
    shutil.rmtree(out_dir, ignore_errors=True)
    # Iterations that ran an evaluation (every 250th) include it: leave them out.
    plain = [ms for i, ms in enumerate(iter_ms) if i % 250 != 0]
    return {
        "name": "nanoGPT CPU recipe",
        "evals": evals,
        "reached": reached,
        "median_iter_ms": statistics.median(plain) if plain else None,
    }


def run_lmscope(recipe: str, data: Path, target: float, extra: list[str]) -> dict[str, Any]:
    """An lmscope recipe on `data`, stopped at the target; evaluation wall times read live."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"ttl-{recipe}-"))
    settings = [f"data={data}", "sample_tokens=0", f"stop_at_val_loss={target}", *extra]
    command = [sys.executable, "-m", "lmscope", "train", recipe, "--out", str(run_dir)]
    command += ["--no-resume", "--no-progress"]
    for setting in settings:
        command += ["--set", setting]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, seen, evals = run_dir / "metrics.jsonl", 0, []
    while True:
        finished = proc.poll() is not None
        now = time.perf_counter() - start
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            for line in lines[seen:]:
                if not line.endswith("}"):
                    break  # a line being written: read it next time
                seen += 1
                row = json.loads(line)
                if "val_loss" in row:
                    evals.append({**row, "wall_s": now})
        if finished:
            break
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(
            f"lmscope train {recipe} failed:\n{proc.stderr.read() if proc.stderr else ''}"
        )
    train_rows = [json.loads(x) for x in metrics.read_text().splitlines() if '"loss"' in x]
    shutil.rmtree(run_dir, ignore_errors=True)
    reached = next((e for e in evals if e["val_loss"] <= target), None)
    rates = [r["tokens_per_s"] for r in train_rows if r.get("tokens_per_s")]
    return {
        "name": f"lmscope {recipe}",
        "evals": evals,
        "reached": reached,
        "median_tokens_per_s": statistics.median(rates) if rates else None,
    }


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
    }


def main() -> None:
    """Run the comparison and print (and optionally save) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (skipped if absent)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--target", type=float, default=1.886)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--recipes", nargs="+", default=["shakespeare-quick", "shakespeare"])
    parser.add_argument("--make-run", action="store_true", help="also the 5-minute check")
    parser.add_argument("--quick", action="store_true", help="toy settings (smoke test)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not args.data.exists():
        parser.error(f"no data file at {args.data}; pass --data tinyshakespeare.txt")

    extra = ["max_steps=20", "eval_every=10", "eval_batches=2"] if args.quick else []
    nano_iters = 20 if args.quick else 2000
    nano_extra = ["--eval_interval=10", "--eval_iters=2"] if args.quick else []
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = None
        if args.nanogpt is not None and (args.nanogpt / "train.py").exists():
            work = nanogpt_workdir(args.nanogpt, args.data, Path(tmp))
        for _ in range(args.rounds):
            if work is not None:
                results.setdefault("nanoGPT", []).append(
                    run_nanogpt(work, args.target, nano_iters, nano_extra)
                )
            for recipe in args.recipes:
                results.setdefault(recipe, []).append(
                    run_lmscope(recipe, args.data, args.target, extra)
                )
    summary = summarise(results)
    report: dict[str, Any] = {"target": args.target, "machine": machine(), "runs": results}
    report["summary"] = summary
    if args.make_run:
        budget = ["max_steps=20", "eval_every=10", "eval_batches=2"] if args.quick else []
        run = run_lmscope("shakespeare", args.data, 0.0, budget)
        below = next((e for e in run["evals"] if e["val_loss"] <= 1.70), None)
        report["make_run"] = {
            "final": run["evals"][-1],
            "reached_1.70": below,
            "median_tokens_per_s": run["median_tokens_per_s"],
        }
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median wall time to the target per contender, and the ratio to nanoGPT."""
    summary: dict[str, Any] = {}
    for name, runs in results.items():
        times = [r["reached"]["wall_s"] for r in runs if r["reached"] is not None]
        steps = [r["reached"]["step"] for r in runs if r["reached"] is not None]
        summary[name] = {
            "median_wall_s": statistics.median(times) if times else None,
            "steps": steps,
            "reached": f"{len(times)}/{len(runs)}",
            "final_val": [r["evals"][-1]["val_loss"] if r["evals"] else None for r in runs],
        }
    base = summary.get("nanoGPT", {}).get("median_wall_s")
    for entry in summary.values():
        t = entry["median_wall_s"]
        entry["ratio_to_nanogpt"] = t / base if (t and base) else None
    return summary


def print_table(report: dict[str, Any]) -> None:
    """The summary as a plain table."""
    print(f"time to val <= {report['target']} ({report['machine']})")
    print(f"{'contender':<22}{'reached':>9}{'steps':>14}{'median s':>10}{'x nanoGPT':>11}")
    for name, s in report["summary"].items():
        wall = f"{s['median_wall_s']:.1f}" if s["median_wall_s"] else "-"
        ratio = f"{s['ratio_to_nanogpt']:.2f}" if s["ratio_to_nanogpt"] else "-"
        print(f"{name:<22}{s['reached']:>9}{s['steps']!s:>14}{wall:>10}{ratio:>11}")
    if "make_run" in report:
        m = report["make_run"]
        print(
            f"make-run recipe on this file: final {m['final']}, first <= 1.70: {m['reached_1.70']}"
        )


if __name__ == "__main__":
    main()
