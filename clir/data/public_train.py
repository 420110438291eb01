"""The experiment's training data as ir_datasets datasets, built from upstream files at pinned commits like
the test sets of :mod:`clir.data.public` (same downloads, checksums, offline message and manual placement):

- ``clir/ud/<lang>`` (en de ru zh fa): the monolingual sentences language adapters are trained on, the
  ``# text =`` lines of Universal Dependencies treebanks' dev/test files (UniversalDependencies/UD_<name>).
  Files in name order, treebanks in :data:`UD_TREEBANKS` order; each text stripped, NFC, at least 10
  characters, first occurrence kept. Documents only (``<lang>-ud<i>``, with ``lang``), no queries.
- ``clir/wikiqa/train-triples``: English WikiQA training triples (castorini/data, ``WikiQA/train``: line i of
  ``a.toks``, ``b.toks``, ``sim.txt``, ``id.txt`` is a question, a sentence of its Wikipedia page, the label,
  the question id). Queries are the questions (by id, in first-seen order), documents the candidate sentences
  (``<qid>-<j>``), qrels the labels, and docpairs every (label 1, label 0) pair of a question: what
  ``clir train`` reads as triples (``data.triples: irds:clir/wikiqa/train-triples``).

Files go to ``$IR_DATASETS_HOME/clir/ud/UD_<name>/<file>.conllu`` and
``$IR_DATASETS_HOME/clir/castorini-data/WikiQA/train/<file>``."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import NamedTuple

from ir_datasets.datasets.base import Dataset
from ir_datasets.formats import (
    BaseDocPairs,
    BaseDocs,
    BaseQrels,
    BaseQueries,
    GenericDoc,
    GenericDocPair,
    GenericQuery,
    TrecQrel,
)
from ir_datasets.indices import Docstore

from clir.data.public import NAME, HomeDownload, LangDoc


class UpstreamFile(NamedTuple):
    rel: str  # path under $IR_DATASETS_HOME/clir/
    url: str
    md5: str
    sha256: str

    def download(self) -> HomeDownload:
        return HomeDownload(self.rel, self.url, self.md5, self.sha256)


# ---------------------------------------------------------------------- Universal Dependencies
UD_URL = "https://raw.githubusercontent.com/UniversalDependencies/UD_{name}/{commit}/{file}"
#: treebanks per language, in the order their sentences are taken, with the commits the files are pinned to
UD_TREEBANKS: dict[str, list[tuple[str, str]]] = {
    "en": [("English-EWT", "15d613d8")],
    "de": [("German-GSD", "297fcf35"), ("German-PUD", "ff80846a")],
    "ru": [("Russian-GSD", "5400f2fd"), ("Russian-Taiga", "3c64a056"), ("Russian-PUD", "da5b3816")],
    "zh": [("Chinese-GSDSimp", "eb3aed31"), ("Chinese-PUD", "2849afd9")],
    "fa": [("Persian-Seraji", "e53af38f"), ("Persian-PerDT", "d728a98d")],
}
#: (md5, sha256) of each treebank's dev and test files (test only for the PUD treebanks), by file name
UD_SUMS: dict[str, tuple[str, str]] = {
    "en_ewt-ud-dev.conllu": (
        "cb1da95ff28a449cb9bc286c922e15e1",
        "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6",
    ),
    "en_ewt-ud-test.conllu": (
        "01630da0129f8600ef761dbcfd18b9e2",
        "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd",
    ),
    "de_gsd-ud-dev.conllu": (
        "64f2a898f9a12c95cfbeb84f27d5fea3",
        "00431f2624cbbf66796c097a9303bbc8f8e8ca88ef35c4c5664aa396b2d674c9",
    ),
    "de_gsd-ud-test.conllu": (
        "4f2eecbf1322df6b19c068b56ebc44e9",
        "bceb8e867ba3ee7f1449d44fb31538d63a514f07e6763e7d9a5ffe794407bed4",
    ),
    "de_pud-ud-test.conllu": (
        "dce76577777db58dd25de1727d21aa3b",
        "a530bdb50349bbd7c13706b6a759a9d73e8f514fff41fbf27149e914b0c3e723",
    ),
    "ru_gsd-ud-dev.conllu": (
        "a21e8cffdccdf9ce56834675b7111fe0",
        "e3e3d4e8d1d7544e531b2b81ae64257efacc97f93276ce6d2ce52fd1de052fa2",
    ),
    "ru_gsd-ud-test.conllu": (
        "79bf213b941c8611ac9097e24e3457a0",
        "f26e022329162a1c6306f76644d06f770f1572501755421165387137fe63138d",
    ),
    "ru_taiga-ud-dev.conllu": (
        "d128135fc423a26a8074aef987cdf08d",
        "d1497731d5cb7162530eb7b278423a103412efa678096f7d456cb57088e12332",
    ),
    "ru_taiga-ud-test.conllu": (
        "7228e00f8a5097bff5fb140eeeaa399c",
        "dec224e1e892153a8a4c83a905d7613c4a318e3e726d96551001eecea4aba3df",
    ),
    "ru_pud-ud-test.conllu": (
        "7e2cc1c755bf39381ce61aca9aa28e2c",
        "a37e076d24f0c3cfd5d48a11bbfec36026da5dc46180b7a12dc991dc372de1ea",
    ),
    "zh_gsdsimp-ud-dev.conllu": (
        "07dd45d5dd196417d376fcd43d2757f6",
        "342a2969df6d6d08bdc25dbc067c93c86ab3099bb054a9921ae7067cbc2c53ad",
    ),
    "zh_gsdsimp-ud-test.conllu": (
        "3d3cab8f5efb484a906c66b5a9985b0c",
        "573f59b799b499a920d2d5bdc0e3c1dbd7bcacf86bdece4334ecbd03e21b6150",
    ),
    "zh_pud-ud-test.conllu": (
        "fbd2f6f5fb2c72e73460fbcfb9001c87",
        "e12582af2e2bbc2e27155ca7dc12b6fc4a037dbc716e1f805d67e34ffb2596b3",
    ),
    "fa_seraji-ud-dev.conllu": (
        "41478d44e85eb74a0e76fd4c2b87f4fb",
        "acc241631c278f96b084285946db28b87fe9c97d81ac58119cdaad0be05799b0",
    ),
    "fa_seraji-ud-test.conllu": (
        "c0cec319b96cc64e188f239293e08537",
        "6d2311596634c739eaf4c4ef4d4125d4ff7562ac56ea4da0b3db6501ecb25710",
    ),
    "fa_perdt-ud-dev.conllu": (
        "9e102eeff8e980e1d97337f8ceb04d39",
        "a8394fe73e9f78ef57e41c32483609557d9aee175fefdca6455efd5bda7ce005",
    ),
    "fa_perdt-ud-test.conllu": (
        "8fb7532230dfd4568d790e6a573dcedd",
        "c8a7738b9cdf1e9b5529b1039a754de3e8d4c4e52cbb316c0c8f15b45971d468",
    ),
}
UD_LANGS = tuple(UD_TREEBANKS)
#: texts shorter than this (after stripping) are not sentences worth training on
UD_MIN_CHARS = 10


def ud_files(lang: str) -> list[UpstreamFile]:
    """The files of ``lang``'s treebanks, in the order their sentences are read."""
    out = []
    for name, commit in UD_TREEBANKS[lang]:
        stem = (
            f"{lang}_{name.split('-')[1].lower()}-ud-"  # UD's file names: German-GSD -> de_gsd-ud-dev.conllu
        )
        for file in sorted(f for f in UD_SUMS if f.startswith(stem)):
            md5, sha256 = UD_SUMS[file]
            url = UD_URL.format(name=name, commit=commit, file=file)
            out.append(UpstreamFile(f"ud/UD_{name}/{file}", url, md5, sha256))
    return out


def conllu_texts(data: bytes) -> Iterator[str]:
    """The ``# text =`` comments of a CoNLL-U file, in order."""
    for line in data.decode("utf-8").splitlines():
        if line.startswith("# text ="):
            yield line[len("# text =") :]


def ud_sentences(files: list[HomeDownload]) -> list[str]:
    """The sentences of a language: stripped, NFC, at least :data:`UD_MIN_CHARS` characters, first kept."""
    seen: dict[str, None] = {}
    for f in files:
        for raw in conllu_texts(f.read_bytes()):
            text = unicodedata.normalize("NFC", raw.strip())
            if len(text) >= UD_MIN_CHARS and text not in seen:
                seen[text] = None
    return list(seen)


class UdDocs(BaseDocs):
    def __init__(self, lang: str) -> None:
        self._lang = lang
        self._files = [f.download() for f in ud_files(lang)]

    def docs_iter(self) -> Iterator[LangDoc]:
        for i, text in enumerate(ud_sentences(self._files)):
            yield LangDoc(f"{self._lang}-ud{i}", text, self._lang)

    def docs_count(self) -> int | None:
        if not all(f.present() for f in self._files):
            return None  # counting must not start a download
        return len(ud_sentences(self._files))

    def docs_cls(self):
        return LangDoc

    def docs_lang(self) -> str:
        return self._lang


def ud_dataset(lang: str) -> Dataset:
    return Dataset(UdDocs(lang))


# ---------------------------------------------------------------------- WikiQA
CASTORINI_COMMIT = "056cbbcb"
WIKIQA_URL = "https://raw.githubusercontent.com/castorini/data/{commit}/WikiQA/train/{file}"
#: (md5, sha256) of castorini/data WikiQA/train/<file>
WIKIQA_SUMS: dict[str, tuple[str, str]] = {
    "a.toks": (
        "b7e6ed593c6fb0f816d4745f31d26283",
        "1cb4f6b9ad69e70d7ffabb02e1d4f75f67d4d9f6fa63db2db28599958eb6ad05",
    ),
    "b.toks": (
        "eb3dc926fdea20a293e3ec9a56da9e97",
        "c20564c144cd32bc13ea5de43ff2f550b78b3937b07bae8a98a82cab777777eb",
    ),
    "sim.txt": (
        "031ea019b27409a2421af07c7d24d291",
        "85ad83b8e3643ed7e5f9707ba628bafed6991f883e0283111282ba199ea9f908",
    ),
    "id.txt": (
        "4babd832cd8f25396911268d3189b4e4",
        "201afeca76d29289e970a495936bc20a714c7df21186328c21e08262c1030216",
    ),
}


def wikiqa_file(file: str) -> HomeDownload:
    md5, sha256 = WIKIQA_SUMS[file]
    url = WIKIQA_URL.format(commit=CASTORINI_COMMIT, file=file)
    return UpstreamFile(f"castorini-data/WikiQA/train/{file}", url, md5, sha256).download()


class WikiqaQuestion(NamedTuple):
    query_id: str
    text: str
    #: (doc id, sentence, label) of each candidate, in file order
    candidates: list[tuple[str, str, int]]


class WikiqaFiles:
    """The four line-aligned files, read into questions (first-seen order). Every handler holds them, so each
    names the files when they are missing."""

    def __init__(self) -> None:
        self._files = {name: wikiqa_file(name) for name in WIKIQA_SUMS}

    def present(self) -> bool:
        return all(f.present() for f in self._files.values())

    def questions(self) -> list[WikiqaQuestion]:
        cols = {}
        for name, f in self._files.items():
            lines = f.read_bytes().decode("utf-8").split("\n")
            cols[name] = lines[:-1] if lines and lines[-1] == "" else lines
        sizes = {name: len(c) for name, c in cols.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"WikiQA train files differ in length: {sizes}")
        out: dict[str, WikiqaQuestion] = {}
        rows = zip(cols["a.toks"], cols["b.toks"], cols["sim.txt"], cols["id.txt"], strict=True)
        for lineno, (question, sentence, label, qid) in enumerate(rows, 1):
            qid = qid.strip()
            q = out.setdefault(qid, WikiqaQuestion(qid, question, []))
            if q.text != question:
                raise ValueError(f"WikiQA train line {lineno}: question {qid} has two texts")
            q.candidates.append((f"{qid}-{len(q.candidates)}", sentence, int(label)))
        return list(out.values())


class WikiqaDocs(BaseDocs):
    def __init__(self) -> None:
        self._files = WikiqaFiles()

    def docs_iter(self) -> Iterator[GenericDoc]:
        for q in self._files.questions():
            for doc_id, sentence, _ in q.candidates:
                yield GenericDoc(doc_id, sentence)

    def docs_count(self) -> int | None:
        if not self._files.present():
            return None
        return sum(len(q.candidates) for q in self._files.questions())

    def docs_cls(self):
        return GenericDoc

    def docs_lang(self) -> str:
        return "en"

    def docs_store(self, field: str = "doc_id") -> Docstore:
        return _MemoryStore(self)


class _MemoryStore(Docstore):
    """The sentences by id, read once (WikiQA train is 20k short sentences)."""

    def __init__(self, docs: WikiqaDocs) -> None:
        super().__init__(GenericDoc)
        self._source = docs
        self._docs: dict[str, GenericDoc] | None = None

    def get_many_iter(self, doc_ids) -> Iterator[GenericDoc]:
        if self._docs is None:
            self._docs = {d.doc_id: d for d in self._source.docs_iter()}
        for doc_id in doc_ids:
            if doc_id in self._docs:
                yield self._docs[doc_id]


class WikiqaQueries(BaseQueries):
    def __init__(self) -> None:
        self._files = WikiqaFiles()

    def queries_iter(self) -> Iterator[GenericQuery]:
        for q in self._files.questions():
            yield GenericQuery(q.query_id, q.text)

    def queries_cls(self):
        return GenericQuery

    def queries_lang(self) -> str:
        return "en"


class WikiqaQrels(BaseQrels):
    def __init__(self) -> None:
        self._files = WikiqaFiles()

    def qrels_iter(self) -> Iterator[TrecQrel]:
        for q in self._files.questions():
            for doc_id, _, label in q.candidates:
                yield TrecQrel(q.query_id, doc_id, label, "0")

    def qrels_cls(self):
        return TrecQrel

    def qrels_defs(self) -> dict[int, str]:
        return {1: "the sentence answers the question", 0: "a sentence of the same page that does not"}


class WikiqaDocPairs(BaseDocPairs):
    """Every (answer, non-answer) pair of each question: positives in file order, each with every negative."""

    def __init__(self) -> None:
        self._files = WikiqaFiles()

    def docpairs_iter(self) -> Iterator[GenericDocPair]:
        for q in self._files.questions():
            positives = [d for d, _, label in q.candidates if label == 1]
            negatives = [d for d, _, label in q.candidates if label != 1]
            for pos in positives:
                for neg in negatives:
                    yield GenericDocPair(q.query_id, pos, neg)

    def docpairs_cls(self):
        return GenericDocPair


def wikiqa_dataset() -> Dataset:
    return Dataset(WikiqaDocs(), WikiqaQueries(), WikiqaQrels(), WikiqaDocPairs())


# ---------------------------------------------------------------------- registry
_registered = False


def dataset_ids() -> list[str]:
    return [f"{NAME}/ud/{lang}" for lang in UD_LANGS] + [f"{NAME}/wikiqa/train-triples"]


def register() -> None:
    """Add the datasets to ir_datasets' registry, once per process."""
    global _registered
    if _registered:
        return
    from clir.data.public import register_missing

    def build(ds_id: str):
        kind, sub = ds_id.split("/")[1:]
        return ud_dataset(sub) if kind == "ud" else wikiqa_dataset()

    register_missing(dataset_ids(), build)
    _registered = True
