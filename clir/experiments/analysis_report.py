"""The report's embedding-analysis section: the measures of each row (pooled over its seeds), the per-layer
CKA of the document routings, each measure's agreement with the primary metric (where it fails to predict
it), and the compared pairs in plain words."""

from __future__ import annotations

from typing import Any

#: (key, column label) of the per-collection tables
_COLUMNS = [
    ("centroid_gap", "centroid gap ↓"),
    ("alignment", "alignment ↓"),
    ("uniformity", "uniformity ↓"),
    ("sim_margin", "margin ↑"),
    ("lang_accuracy", "language probe"),
    ("query_doc_accuracy", "query/doc probe"),
    ("pair_auc", "pair AUC ↑"),
    ("pair_top1", "pair top-1 ↑"),
    ("neighbour_rho", "neighbours ρ ↑"),
    ("cka_mean", "CKA (mean) ↑"),
    ("cka_last", "CKA (last) ↑"),
]

_NAMES = {
    "centroid_gap": "centroid gap",
    "alignment": "alignment",
    "sim_margin": "relevant - random margin",
    "pair_auc": "translation-pair AUC",
    "neighbour_rho": "neighbourhood ρ (vs d-source)",
    "cka_mean": "CKA vs source adapter (mean over layers)",
}

_INTRO = (
    "Measured on each row's own vectors (queries as searched, documents from its index); a row with several "
    "seeds shows the mean over its seeds. Geometry (moved by a common offset of the documents, which "
    "cannot reorder any query's documents): centroid gap, the distance between the mean English-query and "
    "mean document unit vectors; alignment, the mean squared distance of a query to its relevant document; "
    "uniformity, log E exp(-2‖x−y‖²) over documents (Wang & Isola 2020); language probe, a nearest-centroid "
    "classifier (5-fold) predicting a document's language (chance = 1/languages); query/doc probe, the same "
    "telling queries from documents (chance 0.5). Ranking measures (unchanged by a common offset): margin, "
    "a query's score of its relevant document minus a random one's; pair AUC / top-1, how a text's own "
    "translation scores among the row's documents (Tatoeba: the English query sentence and its "
    "translation; XQuAD-R: the English sentence, encoded by the same model under the row's query routing in "
    "the English collection's row, and its aligned translation; 0.5 = chance); neighbours ρ, Spearman's rho "
    "between a document's distances to the others in this row and in the model's d-source row; CKA, linear "
    "CKA between the per-layer states of sampled documents under the source adapter and under this row's "
    "document routing (1 = the same representation up to rotation and scale)."
)


def _fmt(x: Any, sd: Any = None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def analysis_lines(analysis: dict[str, Any]) -> list[str]:
    """The report's analysis section: measures per row, CKA per layer, checks against the metric, pairs."""
    rows = analysis.get("arms") or analysis.get("rows", [])
    if not rows:
        return []
    out = ["## Why routing matters: the embeddings", "", _INTRO, ""]
    out += _check_lines(analysis.get("checks", {})) + cka_lines(analysis.get("cka", []))
    for coll in dict.fromkeys(r["collection"] for r in rows):
        crow = [r for r in rows if r["collection"] == coll]
        cols = [(k, label) for k, label in _COLUMNS if any(k in r["measures"] for r in crow)]
        out += [f"### {coll}", "", "| row | " + " | ".join(label for _, label in cols) + " |"]
        out.append("|---|" + "|".join("---" for _ in cols) + "|")
        for r in crow:
            m, sd = r["measures"], r.get("sd", {})
            cells = [_fmt(m.get(k), sd.get(k)) for k, _ in cols]
            out.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
        out.append("")
        for p in (x for x in analysis.get("pairs", []) if x["collection"] == coll):
            out.append("- " + _pair_sentence(p, {r["variant"]: r["measures"] for r in crow}))
        out.append("")
    return out


def _check_lines(checks: dict[str, Any]) -> list[str]:
    """Does each measure order the rows as the primary metric does? Kendall's tau within collections."""
    if not checks:
        return []
    out = [
        "### Which measure predicts the ranking",
        "",
        "Kendall's tau between each measure (signed so that +1 means it orders the rows as the metric does) "
        "and the primary metric, over the pairs of rows within a collection (the collections' own difficulty "
        "left out; one point per row, seeds pooled); where it fails: the pairs of rows it orders against the "
        "metric, largest metric gap first.",
        "",
        "| measure | tau (within collections) | pairs | lowest per-collection tau | orders against the metric |",
        "|---|---|---|---|---|",
    ]
    for key, c in checks.items():
        per = {k: v for k, v in c["per_collection"].items() if v is not None}
        worst = min(per.items(), key=lambda kv: kv[1]) if per else None
        wrong = "; ".join(
            f"{w['collection']}: {w['rows'][0]} vs {w['rows'][1]} (Δ {w['metric_gap']:.3f})"
            for w in c["discordant"][:3]
        )
        more = len(c["discordant"]) - 3
        tau = "-" if c["tau_within"] is None else f"{c['tau_within']:+.2f}"
        out.append(
            f"| {_NAMES.get(key, key)} | {tau} | {c['pairs']} | "
            + (f"{worst[0]} {worst[1]:+.2f}" if worst else "-")
            + f" | {wrong or 'none'}{f' (+{more} more)' if more > 0 else ''} |"
        )
    return out + [""]


def cka_lines(cka: list[dict[str, Any]]) -> list[str]:
    """Per-layer CKA per collection and document routing (mean over the model's seeds)."""
    if not cka:
        return []
    out = ["### CKA per layer: source adapter vs each document routing", ""]
    for c in cka:
        layers = len(next(iter(c["routings"].values())))
        out += [
            f"{c['collection']} ({c['model']}, {c['docs']} documents, mean over {c['seeds']} seed(s)):",
            "",
        ]
        out.append("| routing | " + " | ".join(f"L{i}" for i in range(layers)) + " |")
        out.append("|---|" + "|".join("---" for _ in range(layers)) + "|")
        for label, vals in c["routings"].items():
            out.append(f"| d-{label} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
        out.append("")
    return out


def _pair_sentence(p: dict, measures: dict[str, dict[str, float]]) -> str:
    a, b = measures.get(p["a"], {}), measures.get(p["b"], {})

    def move(key: str, name: str) -> str:
        return f"{name} {a[key]:.3f} → {b[key]:.3f}" if key in a and key in b else ""

    parts = [
        move("centroid_gap", "centroid gap"),
        move("sim_margin", "margin"),
        move("alignment", "alignment"),
        move("lang_accuracy", "language probe"),
        move("pair_auc", "pair AUC"),
        move("neighbour_rho", "neighbours ρ"),
    ]
    wl = p["wins_losses"]
    return (
        f"`{p['b']}` against `{p['a']}`: "
        + "; ".join(x for x in parts if x)
        + f"; per query ({p['metric']}) {wl['wins']} better, {wl['losses']} worse, {wl['ties']} tied."
    )
