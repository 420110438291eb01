"""Model cards: the ``README.md`` of every model and adapter folder clir writes, in the layout of the
AdapterHub / Hugging Face ecosystem (``adapters``' own ``ADAPTER_CARD_TEMPLATE``): YAML front matter with
``tags`` (``adapter-transformers`` for adapters), ``library_name``, ``base_model``, ``language``, ``datasets``
and a ``clir`` block of facts (kind, adapter config and mode, routing, training data and steps, its licence,
dev loss or metrics), then *Usage* (plain ``adapters``, then clir), *Architecture & Training*, *Evaluation
results* and *Citation*.

:func:`write_model_card` takes the folder and the facts (:class:`CardFacts`); :func:`language_adapter_facts`
turns the record ``clir train-language-adapter`` writes (``clir_language_adapter.json``) into facts, and
:func:`write_language_adapter_card` does both. Paths in a card are portable (:mod:`clir.portable`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clir.atomic import atomic_write_text
from clir.portable import portable_path, portable_text

if TYPE_CHECKING:
    from clir.config import ModelConfig

CARD_FILE = "README.md"
#: what a trained folder's data may be used for, by the source it was read from (prefix match)
DATA_LICENCES: dict[str, str] = {
    "irds:clir/ud/en": "CC BY-SA 4.0 (Universal Dependencies English-EWT)",
    "irds:clir/ud/fa": "CC BY-SA 4.0 (Universal Dependencies Persian-Seraji, Persian-PerDT)",
    "irds:clir/ud/": "CC BY-SA 4.0 (GSD treebanks) and CC BY-SA 3.0 (PUD treebanks), Universal Dependencies",
    "irds:clir/wikiqa/": "Microsoft Research Data License Agreement for WikiQA (research use)",
    "irds:clir/xquad-r": "CC BY-SA 4.0 (XQuAD-R, google-research-datasets/lareqa)",
    "irds:clir/tatoeba/": "CC BY 2.0 FR (Tatoeba, via facebookresearch/LASER)",
    "irds:msmarco-passage": "MS MARCO terms of use (non-commercial research)",
    "irds:mmarco": "MS MARCO terms of use (non-commercial research), mMARCO translations (Apache 2.0)",
    "irds:neumarco": "MS MARCO terms of use (non-commercial research)",
}
CITATION = """```bibtex
@misc{yang2022clir-adapters,
  title = {Parameter-efficient Zero-shot Transfer for Cross-Language Dense Retrieval with Adapters},
  author = {Yang, Eugene and Nair, Suraj and Lawrie, Dawn and Mayfield, James and Oard, Douglas W.},
  year = {2022},
  note = {arXiv preprint}
}
@inproceedings{pfeiffer2020madx,
  title = {{MAD-X}: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer},
  author = {Pfeiffer, Jonas and Vuli{\\'c}, Ivan and Gurevych, Iryna and Ruder, Sebastian},
  booktitle = {Proceedings of EMNLP 2020},
  year = {2020}
}
```"""


@dataclass
class CardFacts:
    """What a card says of a folder. ``kind``: ``model`` (a clir model folder), ``task adapter`` or
    ``language adapter`` (an ``adapters`` adapter folder)."""

    kind: str
    #: the adapter's name (as ``load_adapter`` names it), or the model folder's name
    name: str
    #: the backbone as configured (registered name, hub id or folder)
    backbone: str
    adapter_mode: str | None = None
    #: ``{"config": "seq_bn", "reduction_factor": 16, "non_linearity": "relu"}``; None for full weights
    adapter_config: dict[str, Any] | None = None
    languages: list[str] = field(default_factory=list)
    source_lang: str | None = None
    #: ``{"query": ..., "doc": ...}``: which language adapter each side encodes through
    routing: dict[str, str] | None = None
    #: pooling, normalisation, prefixes, lengths (model folders)
    encoder: dict[str, Any] = field(default_factory=dict)
    training_data: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    #: e.g. ``{"dev_mlm_loss": 6.9, "head_only_dev_mlm_loss": 7.5}`` or ``{"final_train_loss": 0.8}``
    metrics: dict[str, float] = field(default_factory=dict)
    #: (folder relative to the card, adapter name) of the adapters a plain ``adapters`` user loads
    adapter_folders: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- what the facts say
def data_licence(source: str | None) -> str | None:
    """The licence of training data read from ``source`` (an ``irds:`` id), where clir knows it."""
    if not source:
        return None
    best = max((p for p in DATA_LICENCES if source.startswith(p)), key=len, default=None)
    return DATA_LICENCES[best] if best else None


def hub_backbone(backbone: str) -> str | None:
    """The Hugging Face id of a backbone: itself when it is one, a registered model's upstream id, else None
    (a local folder of unknown origin)."""
    from clir.model.registry import lookup, registered

    reg = lookup(backbone)
    if reg is not None:
        return reg.hub_id
    p = Path(backbone).expanduser()
    for model in registered().values():
        if p.is_absolute() and p == model.path:
            return model.hub_id
    from clir.model.resolve import looks_like_path

    return None if looks_like_path(backbone) or p.exists() or not backbone else backbone


def model_type(backbone: str) -> str | None:
    """``bert``, ``xlm-roberta``, ...: from the backbone folder's config.json when it is on this machine."""
    from clir.model.resolve import local_path

    cfg = Path(local_path(backbone)).expanduser() / "config.json"
    try:
        return str(json.loads(cfg.read_text(encoding="utf-8"))["model_type"])
    except (OSError, ValueError, KeyError):
        return None


def _front_matter(f: CardFacts) -> dict[str, Any]:
    adapters = f.kind != "model" or f.adapter_mode in ("task", "madx")
    tags = ["adapter-transformers", "adapters"] if adapters else ["transformers"]
    tags += [t for t in (model_type(f.backbone),) if t]
    tags += ["clir", "dense-retrieval", "cross-lingual"]
    if f.kind == "language adapter":
        tags += ["masked-lm", "mad-x"]
    meta: dict[str, Any] = {
        "tags": tags,
        "library_name": "adapter-transformers" if adapters else "transformers",
    }
    hub = hub_backbone(f.backbone)
    if hub:
        meta["base_model"] = hub
    if f.languages:
        meta["language"] = list(f.languages)
    if f.training_data:
        meta["datasets"] = [f.training_data]
    facts: dict[str, Any] = {"kind": f.kind, "name": f.name, "backbone": portable_path(f.backbone)}
    optional = {
        "adapter_mode": f.adapter_mode,
        "adapter_config": f.adapter_config,
        "source_lang": f.source_lang,
        "routing": f.routing,
        "encoder": f.encoder or None,
    }
    facts.update({k: v for k, v in optional.items() if v is not None})
    training = {
        "data": portable_path(f.training_data) if f.training_data else None,
        "data_license": data_licence(f.training_data),
        "steps": f.steps,
        "batch_size": f.batch_size,
        "learning_rate": f.learning_rate,
    }
    training = {k: v for k, v in training.items() if v is not None}
    if training:
        facts["training"] = training
    if f.metrics:
        facts["metrics"] = dict(f.metrics)
    meta["clir"] = facts
    return meta


def _backbone_for_code(backbone: str) -> tuple[str, str | None]:
    """What ``from_pretrained`` should load to get clir's hidden states, and a comment on it."""
    from clir.model.registry import lookup

    reg = lookup(backbone)
    if reg is not None:  # a registered model is a folder of its own, not necessarily the hub's weights
        why = f"clir's registered `{backbone}` (`clir models pull {backbone}`)"
        if reg.hub_id:
            why += f"; {reg.hub_id} from the hub is close to it, not identical"
        return portable_path(reg.path), why
    return hub_backbone(backbone) or portable_path(backbone), None


def _var(name: str) -> str:
    return re.sub(r"\W", "_", name) + "_adapter"


def _usage(f: CardFacts) -> list[str]:
    lines = ["First, install `adapters`:", "", "```", "pip install -U adapters", "```", ""]
    if not f.adapter_folders:
        lines += [
            "This folder holds full weights (`backbone/`, a Hugging Face model), no adapter: load it with",
            "`transformers.AutoModel.from_pretrained(FOLDER + '/backbone')`, or with clir as below.",
            "",
        ]
    else:
        path, why = _backbone_for_code(f.backbone)
        composition = "the composition is the one clir activates"
        if f.kind == "language adapter":
            composition = "here the adapter alone; clir stacks it under a task adapter, `Stack(lang, task)`"
        lines += [
            "The adapters load into the same backbone with plain `adapters` and give the hidden states clir",
            f"computes ({composition}):",
            "",
            "```python",
            *(["import os", ""] if path.startswith("~") else []),
            "import adapters",
            "from adapters.composition import Stack",
            "from transformers import AutoModel",
            "",
            *([f"# {why}"] if why else []),
            f'model = AutoModel.from_pretrained(os.path.expanduser("{path}"))'
            if path.startswith("~")
            else f'model = AutoModel.from_pretrained("{path}")',
            "adapters.init(model)",
        ]
        for folder, name in f.adapter_folders:
            lines.append(f'{_var(name)} = model.load_adapter("{folder}")  # "{name}"')
        stack = ", ".join(_var(n) for _, n in f.adapter_folders)
        lines += [f"model.active_adapters = Stack({stack})", "```", ""]
    if f.kind == "model":
        lines += ["With clir (encoder settings from `clir_model.yaml`):", "", "```bash"]
        lines += ["clir index --collection DOCS --model THIS_FOLDER --out indexes/NAME", "```"]
    elif f.kind == "language adapter":
        lang = f.languages[0] if f.languages else f.name
        lines += ["With clir, as a madx model's language source:", "", "```yaml"]
        lines += [f"language_adapters: {{{lang}: THIS_FOLDER}}", "```"]
    return lines


def _architecture(f: CardFacts) -> list[str]:
    out = [f"- backbone: `{portable_path(f.backbone)}`"]
    if f.adapter_mode:
        out.append(f"- adapter mode: `{f.adapter_mode}`")
    if f.adapter_config:
        out.append("- adapter config: " + ", ".join(f"{k} `{v}`" for k, v in f.adapter_config.items()))
    if f.encoder:
        out.append("- encoder: " + ", ".join(f"{k} `{v!r}`" for k, v in f.encoder.items()))
    if f.languages:
        out.append(f"- languages: {', '.join(f.languages)}")
    if f.routing:
        route = ", ".join(f"{side} `{r}`" for side, r in f.routing.items())
        out.append(f"- intended routing (the language adapter under the task adapter): {route}")
    if f.training_data:
        licence = data_licence(f.training_data) or "see the data's source"
        out.append(f"- training data: `{portable_path(f.training_data)}` (licence: {licence})")
    budget = [
        f"{f.steps} steps" if f.steps else "",
        f"batch {f.batch_size}" if f.batch_size else "",
        f"learning rate {f.learning_rate:g}" if f.learning_rate else "",
    ]
    if any(budget):
        out.append("- training: " + ", ".join(b for b in budget if b))
    return out + [f"- {n}" for n in f.notes]


def render_card(f: CardFacts) -> str:
    import yaml

    meta = yaml.safe_dump(_front_matter(f), sort_keys=False, allow_unicode=True).strip()
    what = "Adapter" if f.kind != "model" else "clir model"
    title = f"# {what} `{f.name}` for {hub_backbone(f.backbone) or portable_path(f.backbone)}"
    intro = {
        "language adapter": "A MAD-X language adapter (masked language modelling on monolingual text, backbone "
        "frozen), written by `clir train-language-adapter`.",
        "task adapter": "A dense-retrieval task adapter (contrastive training on query-passage triples), "
        "written by `clir train`.",
        "model": f"A clir dual-encoder model folder ({f.adapter_mode or 'full'} mode), written by `clir train`.",
    }[f.kind]
    results = [f"- {k}: {v}" for k, v in f.metrics.items()] or ["No evaluation recorded with this folder."]
    lines = ["---", meta, "---", "", title, "", intro, ""]
    if f.adapter_folders:
        lines += [
            f"{'This adapter was' if f.kind != 'model' else 'Its adapters were'} created for usage with the "
            "**[Adapters](https://github.com/Adapter-Hub/adapters)** library, by clir (cross-language dense "
            "retrieval with adapters).",
            "",
        ]
    lines += ["## Usage", "", *_usage(f), "", "## Architecture & Training", "", *_architecture(f), ""]
    lines += ["## Evaluation results", "", *results, "", "## Citation", "", CITATION, ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, facts: CardFacts) -> Path:
    """Write ``folder/README.md`` from ``facts`` (replacing one there); returns its path."""
    path = Path(folder) / CARD_FILE
    atomic_write_text(path, portable_text(render_card(facts)))  # cards travel with the folder
    return path


# ---------------------------------------------------------------------- model folders
def _arch(arch: Any) -> dict[str, Any]:
    return {
        "config": arch.config,
        "reduction_factor": arch.reduction_factor,
        "non_linearity": arch.non_linearity,
    }


def model_folder_facts(
    config: ModelConfig, folder: Path, training: dict[str, Any] | None = None
) -> list[tuple[Path, CardFacts]]:
    """(folder, facts) of a model folder's card and of each adapter folder in it. ``training`` is what
    ``clir train`` ran (``data``, ``steps``, ``batch_size``, ``lr``, ``final_train_loss``), when known."""
    t = training or {}
    madx = config.adapter_mode == "madx"
    tasks = (
        [] if config.adapter_mode == "full" else ["task"] if config.tied else ["task_query", "task_passage"]
    )
    src = config.source_lang
    # the source language adapter under the task adapter: the folder's copy, else where it comes from
    under: list[tuple[str, str]] = []
    if madx:
        copied = (folder / "adapters" / f"lang_{src}").is_dir()
        under = [(f"adapters/lang_{src}" if copied else portable_path(config.language_adapters[src]), src)]
    encoder = {k: getattr(config, k) for k in ("pooling", "normalize", "query_prefix", "passage_prefix")}
    encoder |= {k: getattr(config, k) for k in ("max_query_length", "max_passage_length")}
    base = CardFacts(
        kind="model",
        name=folder.name.removesuffix(".partial").removesuffix(".final"),
        backbone=config.backbone,
        adapter_mode=config.adapter_mode,
        adapter_config=_arch(config.task_adapter) if tasks else None,
        languages=sorted(config.language_adapters) if madx else [],
        source_lang=src if madx else None,
        routing={"query": config.routing.query, "doc": config.routing.doc} if madx else None,
        encoder=encoder,
        training_data=t.get("data"),
        steps=t.get("steps"),
        batch_size=t.get("batch_size"),
        learning_rate=t.get("lr"),
        metrics={"final_train_loss": t["final_train_loss"]} if "final_train_loss" in t else {},
        adapter_folders=under + [(f"adapters/{n}", n) for n in tasks[:1]],
        notes=["passages go through `task_passage` (adapters/task_passage)"] if len(tasks) > 1 else [],
    )
    out = [(folder, base)]
    for n in tasks:
        seen_from_adapter = [
            (f"../{rel[len('adapters/') :]}" if rel.startswith("adapters/") else rel, lang)
            for rel, lang in under
        ]
        facts = replace(base, kind="task adapter", name=n, encoder={}, notes=[])
        facts.adapter_folders = seen_from_adapter + [(".", n)]
        out.append((folder / "adapters" / n, facts))
    for (
        lang
    ) in base.languages:  # language adapters copied into the folder: their own record where it came along
        source = str(config.language_adapters[lang])
        record = Path(source).expanduser() / "clir_language_adapter.json"
        info = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        facts = language_adapter_facts({"lang": lang, "backbone": config.backbone, **info}, lang)
        if not info:
            facts.adapter_config = _arch(config.language_adapter)
            facts.notes.append(f"from `{portable_path(source)}`")
        out.append((folder / "adapters" / f"lang_{lang}", facts))
    return out


def write_model_folder_cards(
    folder: str | Path, config: ModelConfig, training: dict[str, Any] | None = None
) -> list[Path]:
    """The cards of a model folder and of the task adapters in it (see :func:`model_folder_facts`)."""
    return [
        write_model_card(p, facts)
        for p, facts in model_folder_facts(config, Path(folder), training)
        if p.is_dir()
    ]


# ---------------------------------------------------------------------- language adapters
def language_adapter_facts(info: dict[str, Any], name: str | None = None) -> CardFacts:
    """Facts from the record of ``clir train-language-adapter`` (``clir_language_adapter.json``): its lang,
    backbone, text, arch, steps, batch size, learning rate and dev losses. Missing keys are left out."""
    lang = str(info.get("lang") or name or "")
    arch = info.get("arch") or {}
    metrics: dict[str, float] = {}
    if isinstance(info.get("dev_loss"), int | float):
        metrics["dev_mlm_loss"] = float(info["dev_loss"])
    for ref in ("no_adapter", "unigram"):  # the references, on the same masked tokens
        if isinstance(info.get(f"dev_loss_{ref}"), int | float):
            metrics[f"{ref}_dev_mlm_loss"] = float(info[f"dev_loss_{ref}"])
    dev = info.get("dev") or {}
    notes = (
        [f"dev slice: {dev['texts']} held-out texts (seeded hash of each text)"] if dev.get("texts") else []
    )
    if info.get("head_sha256"):
        notes.append(
            f"trained against the frozen MLM head head_sha256={info['head_sha256']} ({info.get('head')})"
        )
    return CardFacts(
        kind="language adapter",
        name=name or lang,
        backbone=str(info.get("backbone") or ""),
        adapter_mode="madx",
        adapter_config=dict(arch) or None,
        languages=[lang] if lang else [],
        routing={
            "composition": f"Stack({lang}, <task adapter>)",
            "query": f"source, when {lang} is the model's source_lang",
            "doc": f"target, for {lang} documents (the MAD-X swap)",
        }
        if lang
        else None,
        training_data=str(info["text"]) if info.get("text") else None,
        steps=info.get("steps"),
        batch_size=info.get("batch_size"),
        learning_rate=info.get("lr"),
        metrics=metrics,
        adapter_folders=[(".", name or lang)],
        notes=notes,
    )


def write_language_adapter_card(folder: str | Path, info: dict[str, Any] | None = None) -> Path:
    """The card of a language-adapter folder, from ``info`` (default: the folder's ``clir_language_adapter.json``)."""
    folder = Path(folder)
    if info is None:
        record = folder / "clir_language_adapter.json"
        info = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    cfg = folder / "adapter_config.json"
    name = None
    if cfg.is_file():
        name = json.loads(cfg.read_text(encoding="utf-8")).get("name")
    return write_model_card(folder, language_adapter_facts(info, name))
