"""The load index of the REST benchmark (eval.bench.serve_load): the real xquad-r/de passages padded with
synthetic ones to a fixed size, with its doc store, as a clir index folder."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np

from eval.bench import common

log = logging.getLogger("serve_load")


def _sentences(limit: int = 200_000) -> list[tuple[str, str]]:
    """(lang, sentence) from every shared collection's documents."""
    out: list[tuple[str, str]] = []
    for docs in sorted((common.SHARED / "data" / "collections").glob("*/*/docs.jsonl")):
        with open(docs, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                for s in re.split(r"(?<=[.!?。])\s+", d.get("text", "")):
                    if len(s) > 20:
                        out.append((d.get("lang") or docs.parent.name, s))
    return out[:limit]


def padded_index(real: Path, out: Path, total: int, seed: int = 0) -> Path:
    """``real`` plus synthetic passages with random unit vectors, ``total`` passages in all (reused when a
    previous run built the same thing)."""
    import faiss

    from clir.atomic import swap_into_place
    from clir.index import store

    real_manifest = store.read_manifest(real)
    recipe = {
        "real_index": str(real),
        "real_created": real_manifest.get("created"),
        "total": total,
        "seed": seed,
    }
    if (out / "manifest.json").is_file():
        if json.loads((out / "manifest.json").read_text()).get("bench_recipe") == recipe:
            return out
    log.info("writing %s: %s + synthetic passages to %d", out, real, total)
    src = faiss.read_index(str(real / store.INDEX_FILE))
    n_real = src.ntotal
    vecs = src.reconstruct_n(0, n_real)
    rng = np.random.default_rng(seed)
    extra = rng.standard_normal((total - n_real, vecs.shape[1]), dtype=np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    index.add(extra)
    faiss.write_index(index, str(partial / store.INDEX_FILE))
    # rows are passages and the doc store holds documents: a real document split into passages keeps its
    # spans, and each synthetic passage is a whole document of its own (one row, passage 0)
    real_ids = store.read_docids(real)
    pmap = store.PassageMap.load(real, real_ids)
    doc_ids = pmap.doc_ids if pmap is not None else real_ids
    docs = store.DocStore(real, doc_ids)
    sents = _sentences()
    pick = random.Random(seed)
    writer = store.DocStoreWriter(partial)
    ids = list(real_ids)
    spans = [] if pmap is None else [[int(pmap.doc[r]), int(pmap.n[r]), int(pmap.start[r]), int(pmap.end[r])]
                                     for r in range(n_real)]  # fmt: skip
    langs: dict[str, int] = {}
    for row in range(len(doc_ids)):
        d = docs.get_row(row)
        writer.add(d)
        langs[d.get("lang") or "unknown"] = langs.get(d.get("lang") or "unknown", 0) + 1
    for i in range(total - n_real):
        parts = [sents[pick.randrange(len(sents))] for _ in range(pick.randint(2, 4))]
        lang = parts[0][0]
        text = " ".join(s for _, s in parts)
        writer.add({"doc_id": f"syn-{i}", "text": text, "lang": lang})
        ids.append(f"syn-{i}")
        if pmap is not None:
            spans.append([len(doc_ids) + i, 0, 0, len(text)])
        langs[lang] = langs.get(lang, 0) + 1
    writer.close()
    store.write_docids(partial / store.DOCID_FILE, ids)
    if pmap is not None:
        store.atomic_save_npy(partial / store.PASSAGES_FILE, np.asarray(spans, dtype=np.int64))
    manifest = dict(real_manifest)
    manifest.update(
        num_docs=len(doc_ids) + total - n_real,
        num_passages=total,
        doc_langs=langs,
        collection=f"{real_manifest.get('collection')} + {total - n_real} synthetic passages (random unit vectors)",
        bench_recipe=recipe,
        created=store.now_iso(),
    )
    store.write_manifest(partial, manifest)
    swap_into_place(partial, out)
    return out
