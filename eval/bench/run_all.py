"""Run the CPU benchmarks one after another (``make bench``), each in its own process, each rewriting its
section of ``eval/bench/RESULTS.md``; then a run-time table. The GPU benchmark only runs where CUDA is.

    python -m eval.bench.run_all                    # ~15 minutes on 2 quiet cores, more on busy ones
    python -m eval.bench.run_all --only encode_throughput search
    python -m eval.bench.run_all --quick            # smoke run: tiny sizes, nothing written

Children run with ``OMP_WAIT_POLICY=PASSIVE`` unless the caller set a policy: on a machine shared with
other jobs, OpenMP threads spinning at every barrier slow both peers alike, by up to 7x and erratically
(the encoding section measures it), which would bury the ratios in noise. It applies to both sides of
every comparison."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from eval.bench import common

#: (module, extra args for a full run, extra args for --quick)
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("encode_throughput", [], ["--quick"]),
    ("index_build", [], ["--rounds", "1", "--factory", "Flat"]),
    ("search", [], ["--queries", "20", "--latency-queries", "5", "--rounds", "1", "--no-pyserini-encoder"]),
    ("faiss_scaling", [], ["--sizes", "10000", "--queries", "100"]),
    ("flat_search", [], ["--size", "20000", "--rounds", "1"]),
    ("int8", [], ["--per-lang", "2", "--rounds", "1", "--no-quality"]),
    ("mlm_train", [], ["--rounds", "1", "--batch-size", "4"]),
    ("contrastive_train", [], ["--steps", "2", "--dev-every", "2"]),
    (
        "serve_load",
        [],  # its defaults: 30 s per server and level in 3 slices
        ["--duration", "2", "--rounds", "1", "--clients", "1"],
    ),
    ("gpu_encode", [], []),
]
TITLE = "Benchmark run times"


def main(argv: list[str] | None = None) -> int:
    names = [b[0] for b in BENCHMARKS]
    p = argparse.ArgumentParser(prog="python -m eval.bench.run_all", description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=names, help="run just these")
    p.add_argument("--skip", nargs="+", choices=names, default=[], help="leave these out")
    p.add_argument("--quick", action="store_true", help="tiny sizes, nothing written to RESULTS.md")
    p.add_argument("--timeout", type=float, default=900, help="seconds before a benchmark is stopped")
    args = p.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO), env.get("PYTHONPATH")]))
    rows = []
    failed = 0
    for name, full, quick in BENCHMARKS:
        if (args.only and name not in args.only) or name in args.skip:
            continue
        if not (common.BENCH_DIR / f"{name}.py").is_file():
            print(f"== {name}: not present, skipped", flush=True)
            continue
        cmd = [sys.executable, "-m", f"eval.bench.{name}", *(quick if args.quick else full)]
        if args.quick and name != "gpu_encode":
            cmd.append("--no-write")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=common.REPO, env=env, timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        secs = time.perf_counter() - t
        status = "ok" if rc == 0 else f"failed ({rc})"
        failed += rc != 0
        print(f"== {name}: {status} in {secs:.0f} s", flush=True)
        rows.append([name, round(secs / 60, 1), status, time.strftime("%Y-%m-%d %H:%M"), common.load_avg()])
    if rows and not args.quick:
        # merged with earlier runs: `--only` refreshes its rows and keeps the others
        known = {r[0]: r for r in (common.load_json("run_all") or [])}
        known.update({r[0]: r for r in rows})
        merged = [known[n] for n in names if n in known]
        common.save_json("run_all", merged)
        body = "\n".join(
            [
                "Wall time of each benchmark when it last ran under run_all (each must stay under 10 minutes "
                f"on this machine; OMP_WAIT_POLICY={env['OMP_WAIT_POLICY']}). Machine: {common.machine_line()}.",
                "",
                common.table(
                    ["benchmark", "minutes", "status", "when", "load average then"],
                    [[f"`python -m eval.bench.{r[0]}`", *r[1:]] for r in merged],
                ),
            ]
        )
        common.write_section(TITLE, body)
        from eval.bench import summary

        summary.main([])
    print(f"results: {Path(common.RESULTS).relative_to(common.REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
