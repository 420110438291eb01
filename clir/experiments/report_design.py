"""The report's sections on the experimental design: the training seeds and how they pair, the tests at the
seed level, the controls against their reference rows, and the claims table (claim, evidence, verdict: the
verdict is the config's ``claims[].verdict``, the lead's reading of the evidence, never computed here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clir.experiments.scoring import GridResult

VERDICTS = ("supported", "not supported", "not testable with this backbone")


def _p(x: float | None) -> str:
    if x is None:
        return "-"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def seeds_lines(result: GridResult) -> list[str]:
    """Which arms have which seeds, the pairing rule and the shipped folder (nothing without seeds)."""
    plan = result.plan
    seeded = [m for m in plan.models if m.seed is not None]
    if not seeded:
        return []
    sh = plan.config.seeds.shipped
    by_arm: dict[str, list[str]] = {}
    for m in seeded:
        pair = f" (language adapters: seed {m.lang_seed})" if m.lang_seed is not None else ""
        by_arm.setdefault(m.arm, []).append(f"{m.seed}{pair}")
    out = ["## Seeds", ""]
    out += [f"- {arm}: seeds {', '.join(s)}" for arm, s in by_arm.items()]
    lang = sorted({a.seed for a in plan.adapters if a.seed is not None})
    if lang:
        out.append(
            f"- language adapters: seeds {', '.join(map(str, lang))}; pairing rule: the i-th seed of a madx "
            f"arm is trained on and evaluated with language-adapter seed seeds.language_adapters[i mod {len(lang)}]"
        )
    if sh is not None:
        out.append(
            f"- seed {sh.seed} of {', '.join(sh.models)} and of the language adapters: the committed folder "
            f"`{sh.folder}`"
        )
    out += [
        "",
        "A cell of a row with seeds is the mean over its seeds ± their sample standard deviation (each seed's "
        "metric is its mean over queries). § two-level bootstrap: seeds, then queries, resampled with "
        "replacement (seeds of two routings of one model drawn together; queries always paired), p from the "
        "resampled differences centred on the observed one; ¶ t-test over the seeds' means (paired for "
        "routings of one model, Welch's between arms, one-sample against a row without seeds). With 3 "
        "seeds the bootstrap sees few distinct seed draws and runs a little liberal; the t-test has 2-4 degrees "
        "of freedom and little power: read them together. † and ‡ test the seed-averaged per-query scores "
        "(the trained models as they are, not the arm).",
        "",
    ]
    return out


def controls_lines(result: GridResult) -> list[str]:
    """Each control against its reference row, per collection."""
    if not result.plan.controls:
        return []
    cfg = result.plan.config
    tests = list(cfg.significance.tests)
    out = ["## Controls", ""]
    for variant, c in result.plan.controls.items():
        against = f", read against `{c.against}`" if c.against else ""
        out.append(f"- **{c.name}**: `{variant}`{against}" + (f": {c.note}" if c.note else ""))
    if result.controls:
        header = ["control", "collection", "row", "against", f"Δ {cfg.primary}"]
        header += [f"adj. p ({t})" for t in tests]
        out += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in result.controls:
            sig = r.get("significance") or {}
            ps = [_p(sig.get(t, {}).get(cfg.primary, {}).get("p_adjusted")) for t in tests]
            cells = [
                r["control"],
                r["collection"],
                r["variant"],
                r["against"],
                f"{r['delta'][cfg.primary]:+.4f}",
            ]
            out.append("| " + " | ".join(cells + ps) + " |")
    rows = [r for r in result.rows if r.get("control")]
    if rows:
        out += [
            "",
            "Control rows without a reference row are in the tables above (their cells test against the baseline).",
        ]
    return out + [""]


def _evidence(c: dict[str, Any], test: str) -> str:
    colls = c["collections"]
    where = c["question_set"] + (
        f" ({len(colls)} collections averaged per question)" if len(colls) > 1 else ""
    )
    lo, hi = c["ci"]
    return (
        f"`{c['pair'][1]}` − `{c['pair'][0]}` on {where}, {c['questions']} questions, seeds {c['seeds'][0]}/"
        f"{c['seeds'][1]}: Δ {c['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}], adj. p {_p(c['two-level']['p_adjusted'])} §, "
        f"{_p(c['seed-t']['p_adjusted'])} ¶" + (" ✓" if c["holds"] else "")
    )


def claims_lines(result: GridResult) -> list[str]:
    """The claims table: claim, evidence (each comparison), what the tests say, the lead's verdict."""
    claims = result.claims
    if not claims:
        return []
    cfg = result.plan.config
    sig = cfg.significance
    out = [
        "## Claims",
        "",
        f"Each claim's comparisons on the primary metric ({cfg.primary}), one per pair of rows and question set "
        "(collections asking the same questions averaged per question first: one sample of questions counts "
        f"once); one Holm family per claim and test; ✓: Holm-adjusted p < {sig.max_p} by the claim's test "
        f"({'§ two-level bootstrap' if sig.claim_test == 'two-level' else '¶ seed-level t-test'}) in the "
        "expected direction. The verdict is the lead's, from these numbers (config `claims[].verdict`: "
        + ", ".join(VERDICTS)
        + ").",
        "",
        "| claim | evidence | the tests say | verdict |",
        "|---|---|---|---|",
    ]
    for c in claims:
        evidence = "<br>".join(_evidence(x, c["test"]) for x in c["comparisons"]) or "no finished runs"
        expect = {"lower": "expects lower", "higher": "expects higher"}.get(
            c["expect"], "expects a difference"
        )
        verdict = c["verdict"] or "*pending*"
        out.append(f"| **{c['id']}**: {c['text']} ({expect}) | {evidence} | {c['outcome']} | {verdict} |")
    notes = [f"- {c['id']}: {c['note']}" for c in claims if c.get("note")]
    return out + ([""] + notes if notes else []) + [""]
