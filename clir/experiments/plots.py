"""The grid's figures (matplotlib, Agg backend: no display needed): per-language bars of each variant, and the
language-adapter swap delta."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from clir.atomic import replacing

    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, ".tmp.png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def metric_bars(rows: list[dict[str, Any]], metric: str, path: Path, *, title: str = "") -> Path | None:
    """Grouped bars: one group per collection (language), one bar per variant."""
    if not rows:
        return None
    plt = _pyplot()
    collections = list(dict.fromkeys(r["collection"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    value = {(r["collection"], r["variant"]): r["metrics"][metric] for r in rows}
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(collections) * max(1, len(variants)) ** 0.5 + 3), 4.5))
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * width for i in range(len(collections))]
        ys = [value.get((c, v), 0.0) for c in collections]
        ax.bar(xs, ys, width=width, label=v)
    labels = []
    for c in collections:
        lang = next((r.get("lang") for r in rows if r["collection"] == c and r.get("lang")), None)
        labels.append(f"{c}\n({lang})" if lang and lang not in c else c)
    ax.set_xticks(range(len(collections)), labels, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, min(1.0, max(value.values(), default=1.0) * 1.15) or 1.0)
    ax.set_title(title or f"{metric} per collection")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(3, len(variants)))
    ax.grid(axis="y", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def swap_delta(swaps: list[dict[str, Any]], metric: str, path: Path, *, max_p: float = 0.05) -> Path | None:
    """Bars of metric(d-target) - metric(d-source) per collection, one series per model and query routing;
    a star marks a significant difference (any configured test)."""
    if not swaps:
        return None
    plt = _pyplot()
    collections = list(dict.fromkeys(s["collection"] for s in swaps))
    series = list(
        dict.fromkeys(
            f"{s['model']} (q-{s['query_routing']}, d-{s.get('doc_routing', 'target')})" for s in swaps
        )
    )
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(collections) + 3), 4.0))
    for j, name in enumerate(series):
        for i, c in enumerate(collections):
            s = next(
                (
                    s
                    for s in swaps
                    if s["collection"] == c
                    and f"{s['model']} (q-{s['query_routing']}, d-{s.get('doc_routing', 'target')})" == name
                ),
                None,
            )
            if s is None:
                continue
            x = i + (j - (len(series) - 1) / 2) * width
            d = s["delta"][metric]
            ax.bar(x, d, width=width, color=f"C{j}", label=name if i == 0 else None)
            sig = s.get("significance") or {}
            if any(t.get(metric, {}).get("significant") for t in sig.values()):
                ax.annotate("*", (x, d), ha="center", va="bottom" if d >= 0 else "top", fontsize=12)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(collections)), collections, fontsize=8)
    ax.set_ylabel(f"Δ {metric} (target − source)")
    ax.set_title(f"language-adapter swap on the document side: {metric}")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_projections(paths: dict[str, str], out, *, title: str, max_docs: int = 1500, seed: int = 0):
    """One panel per row: documents (coloured by language) and queries (grey) projected on the first two
    principal components of that row's own embeddings."""
    from clir.experiments.analysis import load_vectors, pca_2d

    if not paths:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 4.2), squeeze=False)
    rng = np.random.default_rng(seed)
    for ax, (label, path) in zip(axes[0], paths.items(), strict=True):
        v = load_vectors(path)
        D, Q, langs = v["D"].astype(np.float32), v["Q"].astype(np.float32), v["doc_langs"]
        di = rng.choice(len(D), min(max_docs, len(D)), replace=False)
        qi = rng.choice(len(Q), min(max_docs // 3, len(Q)), replace=False)
        P = pca_2d(np.concatenate([D[di], Q[qi]]))
        pd, pq = P[: len(di)], P[len(di) :]
        ax.scatter(pq[:, 0], pq[:, 1], s=4, c="0.6", alpha=0.5, label="en queries")
        for j, lang in enumerate(sorted(set(langs[di].tolist()))):
            m = langs[di] == lang
            ax.scatter(pd[m, 0], pd[m, 1], s=4, color=f"C{j}", alpha=0.6, label=f"{lang} docs")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, markerscale=3)
    fig.suptitle(title, fontsize=10)
    saved = _save(fig, out)
    plt.close(fig)
    return saved
