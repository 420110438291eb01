"""The public CLIR test sets as ir_datasets datasets, built from their upstream files with ir_datasets' own
registry, Download and format classes.

- ``clir/xquad-r/<lang>``: English XQuAD-R questions -> the ``<lang>`` sentence holding the answer
  (google-research-datasets/lareqa, ``xquad-r/<lang>.json``; questions from ``xquad-r/en.json``).
  ``clir/xquad-r/en`` is the monolingual control: the same questions against the English sentences.
- ``clir/xquad-r-articles/<lang>``: the same questions -> the whole article (paragraphs joined by blank lines).
- ``clir/xquad-r-mlir/<l1>-<l2>-...``: one collection of several languages' sentences (``lang`` on each
  document); a question is relevant to its answer sentence in every language. ``de-ru-zh`` is listed; any other
  combination of XQuAD-R languages resolves on first use (an ir_datasets registry pattern).
- ``clir/tatoeba/<lang>``: LASER's Tatoeba test sets (facebookresearch/LASER, ``data/tatoeba/v1``), English
  sentence ``q<i>`` -> its translation ``<lang>-<i>`` (ISO 639-3 codes, as LASER names them).

Files are fetched from their public URLs at pinned commits into ``$IR_DATASETS_HOME/clir/`` with the upstream
layout (``lareqa/xquad-r/de.json``, ``laser/tatoeba/v1/tatoeba.deu-eng.deu``) and their md5 and sha256
checked; offline, put them there by hand. Nothing is registered at import: :func:`register` runs when clir
first resolves an ``irds:`` id. The experiment's training data (Universal Dependencies sentences, WikiQA
triples) is registered the same way by :mod:`clir.data.public_train`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ir_datasets import util
from ir_datasets.datasets.base import Dataset
from ir_datasets.formats import BaseDocs, BaseQrels, BaseQueries, GenericQuery, TrecQrel
from ir_datasets.util import Download, HashVerificationError, RequestsDownload

log = logging.getLogger(__name__)

NAME = "clir"
#: the upstream commits the files are pinned to (their checksums below are those files')
LAREQA_COMMIT = "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c"
LASER_COMMIT = "74bc6ae7"
LAREQA_URL = (
    f"https://raw.githubusercontent.com/google-research-datasets/lareqa/{LAREQA_COMMIT}/xquad-r/{{lang}}.json"
)
LASER_URL = f"https://raw.githubusercontent.com/facebookresearch/LASER/{LASER_COMMIT}/data/tatoeba/v1/tatoeba.{{pair}}.{{side}}"

#: md5 of lareqa @9bc8c7fb xquad-r/<lang>.json (``en`` holds the English questions)
XQUAD_MD5 = {
    "ar": "1114954691ce6b8ed452aa2befcd21c2",
    "de": "ca34197b707b08bd4e03db4b3640e863",
    "el": "d4982e87c3eff32830cc4d33a26e63fa",
    "en": "b8c2383f52bc96438cf09a69cdccabdd",
    "es": "e4a69ab74a1f71d64f771f419c6e3eea",
    "hi": "390ee65a0559e65033f4cc44a27617fe",
    "ru": "e6ef8814695fead9f2227d9b44144417",
    "th": "1270594bf229e0fa2082d6508095e0b1",
    "tr": "6ee6aed1a7a5745b2cd31322c7d58c15",
    "vi": "72a138effea0cea9d5f7573553d70809",
    "zh": "2122b7e42e66c2d3cbdbe78d21b1a11c",
}
#: sha256 of the same files
XQUAD_SHA256 = {
    "ar": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
    "de": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
    "el": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
    "en": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
    "es": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
    "hi": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
    "ru": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
    "th": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
    "tr": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
    "vi": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
    "zh": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
}
#: the languages of the cross-language collections; ``xquad-r/en`` (English against English) is the control
XQUAD_LANGS = tuple(sorted(set(XQUAD_MD5) - {"en"}))

#: md5 of LASER @74bc6ae7 data/tatoeba/v1/tatoeba.<lang>-eng.{<lang>, eng}
TATOEBA_MD5 = {
    "ara": ("8bd15f240466c6fa171a568fe19cebef", "5e479138ed25d7cd1fb83056c74bb5a0"),
    "cmn": ("05b0aecf932103fc0f186b5de0b206fc", "073bfbe5931d307d1d3bc29d2273d061"),
    "deu": ("e5b09638252fc545e3e57711f1177234", "1b32a8f8c9f9eb5a007d8a3f675e85a3"),
    "fra": ("7e89397eb1bda52e0e35ef3e1f77cbbd", "dbf2d2c6551610a164ef507e8b37682a"),
    "ita": ("00d779e26e278124eb17cb383727db52", "d38794b9db765040554adba53548fcf4"),
    "jpn": ("eda3e4e9a191821653bd5b3f43450613", "8b4412ed76f8ef37dc5bb69405b7ab62"),
    "kor": ("a8abb4e20e4992d12cdcf007e9bb9c1c", "cc7e4c34119e10b02de9a7b0023fb2ce"),
    "pes": ("d47cc0d9d3fc47763e6e4262be5c6bbd", "a3519cf15e18a1889182e9580bb8ec47"),
    "rus": ("a90fa8bc6118172f5b01444f6219a066", "1718aefc3ef66d00850255eaf03b8094"),
    "spa": ("38f17dfa825e80fa0a7537367d2b0bb4", "c5609f591d90a03d0b6cf6657c91ce71"),
}
TATOEBA_SHA256 = {
    "ara": (
        "e67a0ae072b79cd9e8eb09f166c3bc0b23488d39f5720f2ee0a8350ae17b719f",
        "3c11838c963f598a52dcf2f452b666353538257001db5c59c3a5f54a999b336b",
    ),
    "cmn": (
        "965d033966fcd186c89741ad49ab4b0a0b2bbd33e02666635ff3b2be23c1ac1f",
        "29ba36232488f5806aceccac57c59c5e750ddd08edb40eef417e3ada9ff9a239",
    ),
    "deu": (
        "edfa6f75a42554df388f45891735d5e4214158a99def4b73b5908af4a3054551",
        "eb9cc83a42f2c4b22f310d05311207e41abb56c2a084666cac3ee0f84d2d0b84",
    ),
    "fra": (
        "644172ff9642fefa9e41c29b7d6f44196518e84350dc44d4992e943c0cca92b6",
        "5634220f8a26a9a23b84753a9aec0b0832e6bdaa9da3f83e0bd84c928c3f46e3",
    ),
    "ita": (
        "9b3f369d0ed92273b46dd3b983721636e3d15024ce7125f5103229249c386d26",
        "738bf8f981e42d285f4f08bc09238782d285b02050e6e95287aa4e998bb7b24b",
    ),
    "jpn": (
        "56040bd6949170a631039d9f8f4c6440db8761b0065c9686feba55c99a320d46",
        "b42129b34e1bf225ccc25fc00e532a6113af98adbc6605b93021bd8aadeb68b6",
    ),
    "kor": (
        "e550c84184ec35b1a0dab3154284719511a21746e53c40f46eb6ab08179e9188",
        "f900cf3c9b72ed5a400e1804702863ff3df00be58eb060902e02285d0e68fab3",
    ),
    "pes": (
        "f1553713723491fe5876e1060b18fb4abf0c77be3ba06db2e3307e83aedbbb32",
        "b5c6cf8c8d93ff8f2fe26b53f3ee29b62db9c6f7dcddcb086ba48953f4ce926b",
    ),
    "rus": (
        "446ff2cae66053c2277d9735b2c2df6b786cae258385f7ade7bed68d8835c6a0",
        "7b26f52d6085b7c4944d6f5f6f5b6e1932085b42112f1444db515ce59e878fb8",
    ),
    "spa": (
        "f9628cea40481e8251f0999718bd893cff0f261752f5e526b3bc20284e2ca018",
        "89e4470f4572040b1ca94b3edad97dcd8bd2f0141f072e12933b8659dadf917d",
    ),
}
#: ir_datasets' docs_lang is ISO 639-1; the documents keep LASER's ISO 639-3 code in ``lang``
ISO639_1 = {"ara": "ar", "cmn": "zh", "deu": "de", "fra": "fr", "ita": "it"}
ISO639_1 |= {"jpn": "ja", "kor": "ko", "pes": "fa", "rus": "ru", "spa": "es"}


class LangDoc(NamedTuple):
    doc_id: str
    text: str
    lang: str

    def default_text(self):
        return self.text


# ---------------------------------------------------------------------- files
_VERIFIED: set[tuple[str, int, int]] = set()


class HomeDownload(Download):
    """ir_datasets' Download of one upstream file to ``$IR_DATASETS_HOME/clir/<rel>``. The path is resolved
    on each use (IR_DATASETS_HOME may be set after registration), and a file already there is checked against
    its md5 and sha256 too: ir_datasets trusts any file at a cache path, but these are often placed by hand."""

    def __init__(self, rel: str, url: str, md5: str, sha256: str | None = None) -> None:
        super().__init__([RequestsDownload(url)], expected_md5=md5)
        self.rel, self.url, self.sha256 = rel, url, sha256

    @property
    def _cache_path(self) -> str:  # read by Download.path()
        return str(util.home_path() / NAME / self.rel)

    @_cache_path.setter
    def _cache_path(self, value: Any) -> None:  # Download.__init__ assigns None
        pass

    def present(self) -> bool:
        return Path(self._cache_path).is_file()

    def path(self, force: bool = True) -> str:
        self._path = None  # no memo: follow the current IR_DATASETS_HOME
        p = super().path(force)
        self._path = None
        if force:
            _verify(Path(p), self.expected_md5, self.sha256, self.url)
        return p

    def read_bytes(self) -> bytes:
        return Path(self.path()).read_bytes()


def _verify(path: Path, md5: str, sha256: str | None, url: str) -> None:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED:
        return
    digests = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            for h in digests.values():
                h.update(block)
    for name, expected in (("md5", md5), ("sha256", sha256)):
        got = digests[name].hexdigest()
        if expected is not None and got != expected:
            raise HashVerificationError(
                f"{path}: {name} {got}, expected {expected} (the file published at {url}); delete it or "
                "replace it with that file"
            )
    _VERIFIED.add(key)


def xquad_file(lang: str) -> HomeDownload:
    url = LAREQA_URL.format(lang=lang)
    return HomeDownload(f"lareqa/xquad-r/{lang}.json", url, XQUAD_MD5[lang], XQUAD_SHA256[lang])


def tatoeba_file(lang: str, side: str) -> HomeDownload:
    i = 0 if side == lang else 1
    name = f"tatoeba.{lang}-eng.{side}"
    url = LASER_URL.format(pair=f"{lang}-eng", side=side)
    return HomeDownload(f"laser/tatoeba/v1/{name}", url, TATOEBA_MD5[lang][i], TATOEBA_SHA256[lang][i])


# ---------------------------------------------------------------------- XQuAD-R
def _answer_sentence(breaks: list[list[int]], start: int) -> int:
    """Index of the sentence holding an answer: the one whose span contains its start. XQuAD-R's
    ``sentence_breaks`` are end-exclusive (``[begin, end)``, ``end`` is the next sentence's begin), so an answer
    starting exactly at a boundary belongs to the later sentence (29 zh questions and 1 hi turn on this)."""
    for j, (b, e) in enumerate(breaks):
        if b <= start < e:
            return j
    raise ValueError(f"answer start {start} is outside every sentence")


def _derive_xquad(file: HomeDownload, lang: str, unit: str) -> tuple[list[LangDoc], dict[str, str]]:
    """Documents (sentences ``<lang>-s<i>`` or articles ``<lang>-a<i>``) and question id -> answer document."""
    data = json.loads(file.read_bytes())["data"]
    docs: list[LangDoc] = []
    answer: dict[str, str] = {}
    n = 0
    for ai, article in enumerate(data):
        for para in article["paragraphs"]:
            first = n
            if unit == "sentence":
                docs.extend(LangDoc(f"{lang}-s{first + j}", s, lang) for j, s in enumerate(para["sentences"]))
            n += len(para["sentences"])
            for qa in para["qas"]:
                if unit == "sentence":
                    j = _answer_sentence(para["sentence_breaks"], qa["answers"][0]["answer_start"])
                    answer[qa["id"]] = f"{lang}-s{first + j}"
                else:
                    answer[qa["id"]] = f"{lang}-a{ai}"
        if unit == "article":
            text = "\n\n".join(p["context"] for p in article["paragraphs"])
            docs.append(LangDoc(f"{lang}-a{ai}", text, lang))
    return docs, answer


class XquadDocs(BaseDocs):
    def __init__(self, langs: list[str], unit: str) -> None:
        self._files = {lang: xquad_file(lang) for lang in langs}
        self._unit = unit

    def docs_iter(self) -> Iterator[LangDoc]:
        for lang, file in self._files.items():
            yield from _derive_xquad(file, lang, self._unit)[0]

    def docs_count(self) -> int | None:
        if not all(f.present() for f in self._files.values()):
            return None  # counting must not start a download
        return sum(1 for _ in self.docs_iter())

    def docs_cls(self):
        return LangDoc

    def docs_lang(self) -> str | None:
        return next(iter(self._files)) if len(self._files) == 1 else None


class XquadQueries(BaseQueries):
    """The English questions (``en.json``) asked of the target files, by question id, whitespace collapsed."""

    def __init__(self, langs: list[str]) -> None:
        self._english = xquad_file("en")
        self._files = {lang: xquad_file(lang) for lang in langs}

    def queries_iter(self) -> Iterator[GenericQuery]:
        english = json.loads(self._english.read_bytes())["data"]
        text = {
            qa["id"]: " ".join(qa["question"].split())
            for a in english
            for p in a["paragraphs"]
            for qa in p["qas"]
        }
        ids: set[str] = set()
        for file in self._files.values():
            data = json.loads(file.read_bytes())["data"]
            ids.update(qa["id"] for a in data for p in a["paragraphs"] for qa in p["qas"])
        for qid in sorted(ids & text.keys()):
            yield GenericQuery(qid, text[qid])

    def queries_cls(self):
        return GenericQuery

    def queries_lang(self) -> str:
        return "en"


class XquadQrels(BaseQrels):
    def __init__(self, langs: list[str], unit: str) -> None:
        self._files = {lang: xquad_file(lang) for lang in langs}
        self._unit = unit

    def qrels_iter(self) -> Iterator[TrecQrel]:
        answers = [_derive_xquad(f, lang, self._unit)[1] for lang, f in self._files.items()]
        for qid in sorted(set().union(*answers)):
            for answer in answers:
                if qid in answer:
                    yield TrecQrel(qid, answer[qid], 1, "0")

    def qrels_cls(self):
        return TrecQrel

    def qrels_defs(self) -> dict[int, str]:
        return {1: "the document holds the answer"}


def xquad_dataset(langs: list[str], unit: str = "sentence") -> Dataset:
    return Dataset(XquadDocs(langs, unit), XquadQueries(langs), XquadQrels(langs, unit))


# ---------------------------------------------------------------------- Tatoeba
def _lines(file: HomeDownload) -> list[str]:
    lines = file.read_bytes().decode("utf-8").split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


class TatoebaDocs(BaseDocs):
    def __init__(self, lang: str) -> None:
        self._lang, self._file = lang, tatoeba_file(lang, lang)

    def docs_iter(self) -> Iterator[LangDoc]:
        for i, text in enumerate(_lines(self._file)):
            yield LangDoc(f"{self._lang}-{i}", text, self._lang)

    def docs_count(self) -> int | None:
        return len(_lines(self._file)) if self._file.present() else None

    def docs_cls(self):
        return LangDoc

    def docs_lang(self) -> str:
        return ISO639_1[self._lang]


class TatoebaQueries(BaseQueries):
    def __init__(self, lang: str) -> None:
        self._file = tatoeba_file(lang, "eng")

    def queries_iter(self) -> Iterator[GenericQuery]:
        for i, text in enumerate(_lines(self._file)):
            yield GenericQuery(f"q{i}", text)

    def queries_cls(self):
        return GenericQuery

    def queries_lang(self) -> str:
        return "en"


class TatoebaQrels(BaseQrels):
    """Line i of the English file translates line i of the other: one relevant document per query."""

    def __init__(self, lang: str) -> None:
        self._lang = lang
        self._files = (tatoeba_file(lang, lang), tatoeba_file(lang, "eng"))

    def qrels_iter(self) -> Iterator[TrecQrel]:
        n, n_eng = (len(_lines(f)) for f in self._files)
        if n != n_eng:
            raise ValueError(f"tatoeba {self._lang}: {n} sentences but {n_eng} English ones")
        for i in range(n):
            yield TrecQrel(f"q{i}", f"{self._lang}-{i}", 1, "0")

    def qrels_cls(self):
        return TrecQrel

    def qrels_defs(self) -> dict[int, str]:
        return {1: "the document translates the query"}


def tatoeba_dataset(lang: str) -> Dataset:
    return Dataset(TatoebaDocs(lang), TatoebaQueries(lang), TatoebaQrels(lang))


# ---------------------------------------------------------------------- registry
MLIR_PATTERN = rf"^{NAME}/xquad-r-mlir/((?:{'|'.join(XQUAD_LANGS)})(?:-(?:{'|'.join(XQUAD_LANGS)}))+)$"
_registered = False


def _mlir(ds_id: str, groups: tuple[str, ...]) -> Dataset:
    langs = groups[0].split("-")
    if len(set(langs)) != len(langs):
        raise KeyError(ds_id)  # clir.data.irds turns this into "unknown ir_datasets id"
    return xquad_dataset(langs)


def dataset_ids() -> list[str]:
    """The ids :func:`register` lists (any other XQuAD-R language combination works as ``xquad-r-mlir``)."""
    ids = [f"{NAME}/{kind}/{lang}" for kind in ("xquad-r", "xquad-r-articles") for lang in XQUAD_LANGS]
    ids.insert(0, f"{NAME}/xquad-r/en")  # the control: English questions against English sentences
    return ids + [f"{NAME}/xquad-r-mlir/de-ru-zh"] + [f"{NAME}/tatoeba/{lang}" for lang in TATOEBA_MD5]


def register_missing(ids: list[str], build) -> None:
    """Register each of ``ids`` that ir_datasets does not know yet (an earlier copy of a module may have
    registered it) with the dataset ``build(id)`` makes."""
    import ir_datasets

    known = set(ir_datasets.registry)
    for ds_id in ids:
        if ds_id not in known:
            ir_datasets.registry.register(ds_id, build(ds_id))


def _build(ds_id: str):
    kind, lang = ds_id.split("/")[1:]
    if kind == "tatoeba":
        return tatoeba_dataset(lang)
    return xquad_dataset(lang.split("-"), "article" if kind == "xquad-r-articles" else "sentence")


def register() -> None:
    """Add the ``clir/...`` datasets to ir_datasets' registry, once per process."""
    global _registered
    if _registered:
        return
    import ir_datasets

    register_missing(dataset_ids(), _build)
    ir_datasets.registry.register_pattern(MLIR_PATTERN, _mlir)
    _registered = True
    log.debug(
        "registered %d clir datasets under IR_DATASETS_HOME=%s",
        len(dataset_ids()),
        os.environ.get("IR_DATASETS_HOME"),
    )
