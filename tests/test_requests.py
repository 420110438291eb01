"""The verbs' requests (clir.config): a config's `args` make the request the command line makes from the same
flags, bad flags are ClirErrors naming them, and renamed flags keep their old spelling as deprecated aliases."""

from __future__ import annotations

import logging
import re

import pytest

from clir.cli.main import build_parser
from clir.config import (
    AdapterArch,
    LanguageAdapterRequest,
    MlmHeadRequest,
    TrainRequest,
    request_from_flags,
)
from clir.errors import ClirError

BASE = {
    "train": ["--config", "configs/train/e5-small-task-wikiqa.yaml", "--out", "models/x"],
    "train-language-adapter": [
        "--lang",
        "de",
        "--text",
        "irds:clir/ud/de",
        "--backbone",
        "multilingual-e5-small",
        "--out",
        "adapters/de",
    ],
    "train-mlm-head": [
        "--backbone",
        "multilingual-e5-small",
        "--out",
        "heads/e5",
        "--text",
        "de=mono/de.txt",
    ],
}
#: what configs/eval/*.yaml put in `args`
CONFIG_ARGS = {
    "train": ["--batch-size", "16", "--lr", "1e-3", "--language-adapter", "en=models/lang/en", "--seed", "3"],
    "train-language-adapter": [
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--threads",
        "1",
        "--no-invertible",
        "--reduction-factor",
        "4",
        "--dev-fraction",
        "0.1",
    ],
    "train-mlm-head": ["--batch-size", "16", "--lr", "1e-3", "--threads", "1", "--text", "ru=mono/ru.txt"],
}


def _cli_request(verb: str, argv: list[str]):
    import importlib

    args = build_parser().parse_args([verb, *argv])
    return importlib.import_module(f"clir.cli.{verb.replace('-', '_')}").request(args)


@pytest.mark.parametrize("verb", sorted(BASE))
@pytest.mark.parametrize("extra", [False, True], ids=["defaults", "config-args"])
def test_config_args_make_the_request_the_command_line_makes(verb, extra):
    argv = BASE[verb] + (CONFIG_ARGS[verb] if extra else [])
    from_config = request_from_flags(verb, argv)
    assert from_config == _cli_request(verb, argv)
    if extra:
        assert from_config != request_from_flags(verb, BASE[verb])  # the args were read, not dropped


def test_config_args_mean_what_the_flags_mean():
    la = request_from_flags(
        "train-language-adapter", BASE["train-language-adapter"] + CONFIG_ARGS["train-language-adapter"]
    )
    assert isinstance(la, LanguageAdapterRequest)
    assert (la.batch_size, la.lr, la.threads, la.dev.fraction) == (16, 1e-3, 1, 0.1)
    assert la.arch == AdapterArch(config="seq_bn", reduction_factor=4.0, non_linearity="relu")
    default = request_from_flags("train-language-adapter", BASE["train-language-adapter"])
    assert default == LanguageAdapterRequest(
        lang="de", text="irds:clir/ud/de", backbone="multilingual-e5-small", out="adapters/de"
    )  # the flags' defaults are the request's
    head = request_from_flags("train-mlm-head", BASE["train-mlm-head"] + CONFIG_ARGS["train-mlm-head"])
    assert isinstance(head, MlmHeadRequest)
    assert head.texts == ["de=mono/de.txt", "ru=mono/ru.txt"] and head.precision == "auto"
    train = request_from_flags("train", BASE["train"] + CONFIG_ARGS["train"])
    assert isinstance(train, TrainRequest)
    assert (train.batch_size, train.lr, train.seed, train.max_steps) == (16, 1e-3, 3, None)
    assert train.language_adapters == ("en=models/lang/en",)


@pytest.mark.parametrize(
    "verb,argv,fragment",
    [
        ("train", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        ("train", ["--batch-size", "0"], "--batch-size"),
        ("train-language-adapter", ["--lr", "fast"], "--lr: invalid float value: 'fast'"),
        ("train-language-adapter", ["--reduction-factor", "1e-9"], "--reduction-factor"),
        ("train-language-adapter", ["--non-linearity", "nope"], "--non-linearity"),
        ("train-language-adapter", ["--dev-fraction", "0.9"], "--dev-fraction"),
        ("train-mlm-head", ["--precision", "fp16"], "--precision"),
        ("train-mlm-head", ["--help"], "unrecognized arguments: --help"),  # never prints usage and exits
    ],
)
def test_a_bad_flag_in_config_args_is_a_clir_error_naming_it(verb, argv, fragment):
    with pytest.raises(ClirError) as e:
        request_from_flags(verb, BASE[verb] + argv)
    assert fragment in str(e.value)


def test_a_missing_flag_or_verb_is_a_clir_error():
    with pytest.raises(ClirError, match="required: --lang"):
        request_from_flags("train-language-adapter", ["--text", "t", "--backbone", "b", "--out", "o"])
    with pytest.raises(ClirError, match="cannot build with `clir index`"):
        request_from_flags("index", [])


def test_language_adapter_arch_knobs_keep_their_names():
    """invertible / reduction_factor / non_linearity still set the adapter; the run record keeps its layout."""
    req = LanguageAdapterRequest(
        lang="de", text="t", backbone="b", out="o", invertible=False, reduction_factor=8, non_linearity="gelu"
    )
    assert req.arch == AdapterArch(config="seq_bn", reduction_factor=8, non_linearity="gelu")
    assert LanguageAdapterRequest(lang="de", text="t", backbone="b", out="o").arch == AdapterArch(
        config="seq_bn_inv", reduction_factor=2
    )
    flat = req.flat()
    keys = list(flat)
    assert keys[keys.index("warmup_ratio") + 1 : keys.index("max_length")] == [
        "invertible",
        "reduction_factor",
        "non_linearity",
    ]
    assert (flat["invertible"], flat["reduction_factor"], flat["non_linearity"]) == (False, 8, "gelu")
    assert "arch" not in flat
    with pytest.raises(ClirError, match="language adapter config 'double_seq_bn'"):
        LanguageAdapterRequest(lang="de", text="t", backbone="b", out="o", arch=AdapterArch("double_seq_bn"))


def test_mlm_head_request_takes_the_old_bf16_switch():
    assert MlmHeadRequest(texts=["t"], backbone="b", out="o", bf16=True).precision == "bf16"
    assert MlmHeadRequest(texts=["t"], backbone="b", out="o").precision == "fp32"


def test_old_import_paths_still_name_the_requests():
    from clir.config import IndexRequest, PassageSpec, RayRequest, ServeSettings
    from clir.index import IndexArgs
    from clir.index import PassageSpec as IndexPassageSpec
    from clir.index.distributed import RayArgs
    from clir.serve import ServeSettings as ServeServeSettings
    from clir.train import LanguageAdapterArgs
    from clir.train.head_training import MlmHeadArgs

    assert (IndexArgs, IndexPassageSpec, RayArgs, ServeServeSettings) == (
        IndexRequest,
        PassageSpec,
        RayRequest,
        ServeSettings,
    )
    assert (LanguageAdapterArgs, MlmHeadArgs) == (LanguageAdapterRequest, MlmHeadRequest)


# ---------------------------------------------------------------------- renamed flags
def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


INDEX = ["index", "--collection", "c", "--model", "m", "--out", "o", "--ray"]
SEARCH = ["search", "--index", "i", "--queries", "q"]


@pytest.mark.parametrize(
    "new,old,dest,value,warning",
    [
        (
            ["--ray-actors", "3"],
            ["--workers", "3"],
            "ray_actors",
            3,
            "--workers is deprecated: use --ray-actors",
        ),
        (
            ["--processes", "2"],
            ["--workers", "2"],
            "processes",
            2,
            "--workers is deprecated: use --processes",
        ),
        (
            ["--gpus-per-actor", "1"],
            ["--gpus-per-worker", "1"],
            "gpus_per_actor",
            1.0,
            "--gpus-per-worker is deprecated: use --gpus-per-actor",
        ),
        (
            ["--cpus-per-actor", "2"],
            ["--cpus-per-worker", "2"],
            "cpus_per_actor",
            2.0,
            "--cpus-per-worker is deprecated: use --cpus-per-actor",
        ),
        (["--out", "r.trec"], ["--run", "r.trec"], "out", "r.trec", "--run is deprecated: use --out"),
        (
            ["--doc-score", "passages"],
            ["--passages"],
            "doc_score",
            "passages",
            "--passages is deprecated: use --doc-score passages",
        ),
    ],
)
def test_renamed_flags_keep_the_old_spelling_with_a_warning(new, old, dest, value, warning, caplog):
    verb = (
        INDEX
        if dest in ("ray_actors", "gpus_per_actor", "cpus_per_actor")
        else ["serve"]
        if dest == "processes"
        else SEARCH
    )
    with caplog.at_level(logging.WARNING, logger="clir.cli"):
        assert getattr(_parse(*verb, *new), dest) == value
        assert not caplog.records
        assert getattr(_parse(*verb, *old), dest) == value
    assert [r.getMessage() for r in caplog.records] == [warning]


def test_a_renamed_flag_s_errors_name_the_spelling_used(capsys):
    from clir.cli.main import main

    assert main([*INDEX[:-1], "--workers", "2"]) == 1
    assert "--workers needs --ray" in capsys.readouterr().err
    assert main([*INDEX[:-1], "--ray-actors", "2"]) == 1
    assert "--ray-actors needs --ray" in capsys.readouterr().err


@pytest.mark.parametrize(
    "verb,new,old",
    [
        ("index", "--ray-actors", "--workers"),
        ("serve", "--processes", "--workers"),
        ("search", "--out", "--run"),
    ],
)
def test_help_shows_the_new_spelling_only(verb, new, old, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([verb, "--help"])
    text = capsys.readouterr().out
    usage, options = text.split("\n\n")[0], text.split("options:")[1]
    # the old spelling has no entry of its own (a help text may say what the flag was called)
    entry = re.compile(rf"^  {re.escape(new)}\b", re.M)  # an entry; wrapped help lines sit deeper
    old_entry = re.compile(rf"^  {re.escape(old)}(?![\w-])", re.M)
    assert entry.search(options) and not old_entry.search(options) and f"[{old} " not in usage


def test_the_index_request_carries_the_ray_pool():
    from clir.cli.index import request

    req = request(_parse(*INDEX, "--ray-actors", "3", "--gpus-per-actor", "1"))
    assert req.ray is not None and (req.ray.actors, req.ray.gpus_per_actor, req.ray.address) == (
        3,
        1.0,
        "local",
    )
    assert req.chunk_size == 512  # a Ray build's chunk unless --chunk-size
    assert request(_parse(*INDEX[:-1])).ray is None


def test_searcher_takes_doc_score_and_its_old_keyword():
    from clir.search import Searcher

    with pytest.raises(ClirError, match="doc_score 'best'"):
        Searcher("no-index", doc_score="best")
    with pytest.raises(ClirError, match="doc_score 'best'"):
        Searcher("no-index", mode="best")  # the old keyword reaches the same check


def test_a_serve_config_s_workers_key_is_read_as_processes(tmp_path, caplog):
    from clir.serve.config import load_serve_config

    old = tmp_path / "old.yaml"
    old.write_text("indexes: {de: idx}\nworkers: 2\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="clir.serve.config"):
        _, data = load_serve_config(old)
    assert data == {"processes": 2} and "workers is deprecated: use processes" in caplog.text
    both = tmp_path / "both.yaml"
    both.write_text("indexes: {de: idx}\nworkers: 2\nprocesses: 3\n", encoding="utf-8")
    with pytest.raises(ClirError, match="not both"):
        load_serve_config(both)
