"""Run every benchmark, echo its output, and write the figures to bench/results.json.

Each benchmark runs as its own process (``python bench/NAME.py``) and prints one JSON
object as its last line; this runner merges those objects, with the date, the machine
(CPU model, cores, RAM, load average before and after) and the Python version, into one
file that the README points to. Every benchmark's own figures stay under
``benches.NAME``; their keys are also merged at the top level (a key two benchmarks
share is prefixed with the benchmark's name).

    python bench/run_all.py [--quick] [--only NAME ...] [--out PATH]

``--quick`` runs small sizes (minutes, not tens of minutes) and writes
bench/results.quick.json unless ``--out`` says otherwise; ``--only`` runs some of the
benchmarks and updates their part of the output file. A failed benchmark makes the
runner exit non-zero and write bench/results.failed.json instead, so a committed
results.json is never replaced by a broken run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _util import loadavg, machine, now_iso  # noqa: E402

# name: (script, quick arguments)
BENCHES: dict[str, tuple[str, list[str]]] = {
    "engine": ("engine.py", ["--messages", "500"]),
    "sender": ("sender.py", ["--messages", "1000", "--window", "5"]),
    "scheduler": ("scheduler.py", ["--members", "10000", "--small", "1000", "--no-postgres"]),
    "coordinators": ("coordinators.py", ["--recipients", "10000", "--rows", "1000"]),
    "http": ("http_serve.py", ["--quick"]),
}
# Keys too generic to stand alone at the top level.
RENAME = {("engine", "ratio"): "engine_ratio"}
REQUIRED = ("http_msgs_per_s", "bare_flask_req_per_s", "http_ratio", "p99_ms", "queue_100k_s",
            "rss_idle_mb", "rss_after_100k_mb")


def run(name: str, quick: bool) -> dict[str, Any]:
    """Run one benchmark, echoing its output; return its exit status, time and figures."""
    script, quick_args = BENCHES[name]
    cmd = [sys.executable, str(HERE / script), *(quick_args if quick else [])]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    last = ""
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                          bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line.strip()
    seconds = round(time.monotonic() - started, 1)
    figures: dict[str, Any] = {}
    try:
        parsed = json.loads(last)
        if isinstance(parsed, dict):
            figures = parsed
    except ValueError:
        pass
    status = proc.returncode if figures or proc.returncode else 1  # no JSON: a failure
    return {"exit": status, "seconds": seconds, "figures": figures,
            "args": cmd[2:], "date": now_iso()}


def merge(results: dict[str, Any], benches: dict[str, dict[str, Any]]) -> None:
    """Merge each benchmark's figures into the top level of the results."""
    owner: dict[str, str] = {}
    for name, bench in benches.items():
        for key, value in bench["figures"].items():
            top = RENAME.get((name, key), key)
            if top in owner and owner[top] != name:
                top = f"{name}_{key}"
            owner[top] = name
            results[top] = value


def main() -> None:
    """Run the benchmarks and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", action="append", choices=sorted(BENCHES), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}")
    parser.add_argument("--out", type=Path, help="file to write (default: bench/results.json)")
    args = parser.parse_args()
    out: Path = args.out or HERE / ("results.quick.json" if args.quick else "results.json")
    names = args.only or list(BENCHES)
    benches: dict[str, dict[str, Any]] = {}
    if args.only and out.exists():
        benches = json.loads(out.read_text(encoding="utf-8")).get("benches", {})
    load_before = loadavg()
    for name in names:
        benches[name] = run(name, args.quick)
    results: dict[str, Any] = {
        "date": now_iso(), "machine": machine(), "python": platform.python_version(),
        "quick": args.quick, "loadavg_before": load_before, "loadavg_after": loadavg(),
        "note": "2 cores shared with other work: compare the ratios (baseline measured in "
                "the same run), not absolute rates, across machines",
    }
    merge(results, {name: benches[name] for name in BENCHES if name in benches})
    results["benches"] = benches
    failed = [name for name in names if benches[name]["exit"] != 0]
    missing = [key for key in REQUIRED if key not in results] if not args.only else []
    if failed or missing:
        out = HERE / "results.failed.json"
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\n=== wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    for key in REQUIRED:
        print(f"  {key}: {results.get(key, 'MISSING')}")
    if failed or missing:
        print(f"FAILED: {', '.join(failed) or '-'}; missing figures: {', '.join(missing) or '-'}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
