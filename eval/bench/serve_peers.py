"""The servers the REST benchmark (eval.bench.serve_load) puts under load: `clir serve` and Pyserini's REST
app over the same index, each a child process on a loopback port."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from eval.bench import common

log = logging.getLogger("serve_load")

JAVA_HOME = "/usr/lib/jvm/temurin-25-jdk-amd64"
ALIAS = "bench"


def lucene_docs(index_dir: Path, out: Path) -> Path:
    """A Lucene index of the same documents (raw JSON stored): Pyserini's REST server fetches every hit's
    text from one (its `base_index`)."""
    if (out / "segments_1").exists() or any(out.glob("segments_*")):
        return out
    from clir.index import store

    jsonl_dir = out.with_name(out.name + ".jsonl")
    jsonl_dir.mkdir(parents=True, exist_ok=True)
    ids = store.read_docids(index_dir)
    pmap = store.PassageMap.load(index_dir, ids)
    ids = pmap.doc_ids if pmap is not None else ids
    docs = store.DocStore(index_dir, ids)
    with open(jsonl_dir / "docs.jsonl", "w", encoding="utf-8") as f:
        for row, doc_id in enumerate(ids):
            d = docs.get_row(row)
            f.write(json.dumps({"id": doc_id, "contents": d["text"]}, ensure_ascii=False) + "\n")
    cmd = [sys.executable, "-m", "pyserini.index.lucene", "--collection", "JsonCollection", "--input",
           str(jsonl_dir), "--index", str(out), "--generator", "DefaultLuceneDocumentGenerator", "--threads", "2",
           "--storeRaw"]  # fmt: skip
    log.info("building the Lucene document index %s", out)
    subprocess.run(cmd, check=True, env=java_env(), stdout=subprocess.DEVNULL)
    shutil.rmtree(jsonl_dir)
    return out


def java_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("JAVA_HOME", JAVA_HOME)
    env.setdefault("OPENAI_API_KEY", "x")  # pyserini imports its OpenAI encoders at import time
    env.setdefault(
        "OMP_WAIT_POLICY", "PASSIVE"
    )  # what `clir serve` sets for itself; the same for every server
    return env


# ---------------------------------------------------------------------------------------------- Pyserini
def run_pyserini_server(index_dir: str, docs_dir: str, port: int) -> None:
    """Pyserini 1.6.0's REST app (`pyserini.server.rest.app:app`, its routes and SearchController) with our
    FAISS index registered under an alias. Its own entry point cannot do this; three shims are needed:

    1. `pyserini.encode.optional._uniir` (M-BEIR image+text encoders) is imported by the controller but
       needs `uniir-for-pyserini`, whose releases need Python >= 3.12 or pull torchvision/timm/fairscale/
       opencv: a placeholder module stands in (that multimodal path is never used here);
    2. the controller opens the prebuilt `msmarco-v1-passage` Lucene index at import (a 2 GB download; this
       machine is offline): `LuceneSearcher.from_prebuilt_index` answers None for it, and resolves our
       document alias to the local Lucene folder (as a downloaded prebuilt index would, minus the download);
    3. the server only knows prebuilt index names and builds query encoders from a name alone
       (`AutoQueryEncoder(encoder_dir=...)`: CLS pooling, no prefix, no normalisation — not e5's settings):
       the alias is registered in the controller with a `FaissSearcher` whose QueryEncoder is clir's encoder
       from the index manifest (same weights, settings and bf16 autocast as `clir serve`).
    Everything else (routing, validation, the search and document-fetch code) is Pyserini's."""
    import types

    for k, v in java_env().items():
        os.environ.setdefault(k, v)
    sys.modules["pyserini.encode.optional._uniir"] = types.SimpleNamespace(UniIRQueryEncoder=None)
    import uvicorn
    from pyserini.encode import QueryEncoder
    from pyserini.search.faiss import FaissSearcher
    from pyserini.search.lucene import LuceneSearcher

    docs_alias = f"{ALIAS}-docs"
    original = LuceneSearcher.from_prebuilt_index.__func__

    def from_prebuilt_index(cls, name, verbose=False):
        if name == docs_alias:
            return cls(docs_dir)
        if name == "msmarco-v1-passage":
            return None
        return original(cls, name, verbose)

    LuceneSearcher.from_prebuilt_index = classmethod(from_prebuilt_index)
    from pyserini.server.models import IndexConfig
    from pyserini.server.rest.app import app
    from pyserini.server.search_controller import get_controller

    from clir.index import store
    from clir.model import load_encoder

    spec = store.read_manifest(index_dir)["model"]
    encoder = load_encoder(spec["source"], spec["config"])

    from concurrent.futures import ThreadPoolExecutor

    # The encoder runs in one worker thread, as in `clir serve`: on this oversubscribed 2-core machine torch's
    # OpenMP regions are several times slower on the main thread than on a worker thread, which would charge
    # Pyserini for a machine quirk. The call still blocks the event loop, as Pyserini's async route does.
    pool = ThreadPoolExecutor(1)

    class ClirQueryEncoder(QueryEncoder):
        def __init__(self) -> None:
            super().__init__(None)
            self.has_model = True

        def encode(self, query: str, **_: Any) -> np.ndarray:
            return pool.submit(encoder.encode_queries, [query], lang="en").result()[0]

    controller = get_controller()
    controller.indexes[ALIAS] = IndexConfig(
        name=ALIAS,
        searcher=FaissSearcher(index_dir, ClirQueryEncoder()),
        index_type="faiss",
        base_index=docs_alias,
    )
    controller.indexes[docs_alias] = IndexConfig(
        name=docs_alias, searcher=LuceneSearcher(docs_dir), index_type="tf"
    )
    uvicorn.run(app, host="127.0.0.1", port=port)  # Pyserini's main() binds 0.0.0.0; loopback here


# ---------------------------------------------------------------------------------------------- servers
class Server:
    """A server child process on a free loopback port (the server picks it: port 0, read from its log)."""

    def __init__(self, name: str, cmd: list[str], search_path: str, body: Any, log_path: Path) -> None:
        self.name, self.cmd, self.search_path, self.body = name, cmd, search_path, body
        self.log_path = log_path
        self.url: str | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> Server:
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=java_env(),
            cwd=common.REPO,
        )
        found = threading.Event()
        logf = open(self.log_path, "w", encoding="utf-8")

        def pump() -> None:
            for line in self.proc.stdout:
                logf.write(line)
                m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            logf.close()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + timeout
        while not found.wait(0.5):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
        import httpx

        while time.time() < deadline:  # ready: one real search answered
            try:
                r = httpx.post(self.url + self.search_path, json=self.body("warm up"), timeout=60)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} never answered a search; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def clir_server(index_dir: Path, name: str, extra: list[str], logs: Path) -> Server:
    cmd = [sys.executable, "-m", "clir", "serve", "--index", f"{ALIAS}={index_dir}", "--host", "127.0.0.1",
           "--port", "0", *extra]  # fmt: skip
    return Server(name, cmd, "/search", lambda q: {"query": q, "k": 10}, logs / f"{name}.log")


def pyserini_server(index_dir: Path, docs_dir: Path, logs: Path) -> Server:
    cmd = [sys.executable, "-m", "eval.bench.serve_load", "--pyserini-server", str(index_dir), str(docs_dir)]
    return Server(
        "pyserini",
        cmd,
        f"/v1/indexes/{ALIAS}/search",
        lambda q: {"query": q, "hits": 10},
        logs / "pyserini.log",
    )


def top_ids(server: Server, body: dict) -> list[str]:
    import httpx

    if getattr(server, "client", None) is None:  # one connection: a fresh httpx client costs ~0.1-0.3 s
        server.client = httpx.Client(timeout=120)
    r = server.client.post(server.url + server.search_path, json=body)
    r.raise_for_status()
    data = r.json()
    hits = data.get("hits") if "hits" in data else data["candidates"]
    return [h.get("doc_id") or h.get("docid") for h in hits]
