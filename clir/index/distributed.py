"""Distributed index builds on Ray (``clir index --ray``).

The driver streams the collection (any source ``load_collection`` reads) into the same chunks as a
single-process build, a pool of Ray actors encodes them (one model load per actor; one actor per GPU on GPU
clusters, CPU actors otherwise), and the driver commits each chunk to ``OUT.partial/chunks`` as it comes back,
then writes the index folder with the code ``build_index`` uses. Checkpoints, ``--resume`` and the result are
therefore those of a single-process build: same doc-id order, same vectors up to float noise.

Ray Core actors rather than Ray Data: chunk boundaries follow the collection's order (kept documents, duplicate
ids refused), which only a sequential reader knows, and generic sources (``irds:``, .tsv) stream sequentially;
the driver reads ~10^5 documents/s, far more than a GPU encodes. Actors are restarted by Ray when their process
dies and their chunk is retried (``max_restarts`` / ``max_task_retries``)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from clir.atomic import disk_errors
from clir.config.index import RayRequest
from clir.config.model import Routing
from clir.errors import ClirError
from clir.index.build import (
    BuildState,
    IndexArgs,
    IndexResult,
    check_args,
    encode_records,
    finish_build,
    iter_chunks,
    start_build,
)
from clir.index.chunks import chunk_done, disk_hint, write_chunk

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'clir[distributed]'"
LOCAL = "local"
#: chunks are the unit of work and of retry: smaller than a single-process build's so they spread over workers
DEFAULT_CHUNK_SIZE = 512


#: the Ray part of the verb's request (its home is config); the old name kept for callers
RayArgs = RayRequest


def require_ray():
    """Import Ray or say how to install it."""
    try:
        import ray
    except ImportError:
        raise ClirError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class ChunkEncoder:
    """A Ray actor (wrapped with ``ray.remote`` at run time): loads the encoder once, encodes whole chunks
    with document-side language routing exactly like a single-process build."""

    def __init__(
        self,
        model: str,
        overrides: dict[str, Any],
        batch_size: int,
        threads: int | None,
        routing: Routing | None = None,
    ) -> None:
        os.environ["CLIR_PROGRESS"] = "0"  # the one progress bar is the driver's
        if threads:
            import torch

            torch.set_num_threads(threads)
        from clir.model import load_encoder

        self.encoder = load_encoder(model, overrides)
        self.batch_size = batch_size
        self.routing = routing

    def describe(self) -> dict[str, Any]:
        import socket

        return {
            "fingerprint": self.encoder.fingerprint(self.routing),
            "device": str(self.encoder.device),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }

    def encode(self, no: int, recs: list[dict[str, Any]]) -> np.ndarray:
        return encode_records(self.encoder, recs, self.batch_size, self.routing)


def build_index_ray(
    args: IndexArgs,
    ray_args: RayArgs | None = None,
    *,
    worker_cls: type | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> IndexResult:
    """Build ``args.out`` like :func:`clir.index.build_index`, encoding on a Ray actor pool.

    ``worker_cls`` replaces :class:`ChunkEncoder` (same constructor and methods; tests inject faults with it);
    ``on_chunk(no)`` is called in the driver after chunk ``no`` is committed."""
    from clir.model import load_encoder

    ray = require_ray()
    ra = ray_args or RayArgs()
    if ra.actors is not None and ra.actors < 1:
        raise ClirError("--ray-actors must be >= 1")
    if ra.gpus_per_actor < 0 or (ra.cpus_per_actor is not None and ra.cpus_per_actor <= 0):
        raise ClirError("--gpus-per-actor must be >= 0 and --cpus-per-actor > 0")
    t0 = time.perf_counter()
    check_args(args)  # before anything starts: an existing OUT is refused at once
    started = _connect(ray, ra)
    actors: list[Any] = []
    b = None
    try:
        workers, opts = _plan(ray, ra)
        threads = int(opts["num_cpus"]) if ra.gpus_per_actor == 0 else None
        cls = ray.remote(worker_cls or ChunkEncoder)
        actors = [
            cls.options(**opts).remote(args.model, args.overrides, args.batch_size, threads, args.routing)
            for _ in range(workers)
        ]
        ready = [a.describe.remote() for a in actors]
        # the driver's own copy (CPU) gives the manifest's fingerprint and finalizes; actors load meanwhile
        encoder = load_encoder(args.model, args.overrides, device="cpu")
        b = start_build(args, encoder)
        _await_workers(ray, ready, b.recipe.encoder or {}, str(args.model))

        t_enc = time.perf_counter()
        with disk_errors(b.partial, disk_hint(b.out)):
            counts = _encode_on_pool(ray, actors, b, ra, on_chunk)
        t_enc = time.perf_counter() - t_enc
    except BaseException:
        if b is not None:  # the lock goes; a staging folder without any chunk too
            b.release(failed=True)
        raise
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    try:
        with disk_errors(b.partial, disk_hint(b.out)):
            n_docs = finish_build(b, encoder, counts["chunks"], counts["docs"])
    finally:
        b.release(failed=not b.out.exists())
    return IndexResult(
        b.out,
        n_docs,
        counts["docs"],
        b.counters["skipped_empty"],
        counts["encoded"],
        t_enc,
        time.perf_counter() - t0,
    )


def _encode_on_pool(
    ray, actors: list[Any], b: BuildState, ra: RayArgs, on_chunk: Callable[[int], None] | None
) -> dict[str, int]:
    """Send every unfinished chunk to the least loaded actor (``ra.in_flight`` queued per actor) and commit
    each result as it comes back; returns the counts of chunks, rows, encoded rows and committed chunks."""
    from clir.progress import progress

    bar = progress(total=b.total, desc=f"index {b.out.name}", unit="doc")
    pending: dict[Any, tuple[int, list[dict[str, Any]], int]] = {}  # ref -> (chunk, records, actor)
    load = [0] * len(actors)
    counts = {"chunks": 0, "docs": 0, "encoded": 0, "committed": 0}

    def collect() -> None:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            no, recs, i = pending.pop(ref)
            load[i] -= 1
            vecs = _result(ray, ref, no, ra, b.partial, counts["committed"])
            write_chunk(b.chunks_dir, no, recs, vecs)
            counts["encoded"] += len(recs)
            counts["committed"] += 1
            bar.update(sum(r["n"] == 0 for r in recs))
            if on_chunk is not None:
                on_chunk(no)

    try:
        for no, recs in iter_chunks(b):
            counts["chunks"] += 1
            counts["docs"] += len(recs)
            if chunk_done(b.chunks_dir, no):
                bar.update(sum(r["n"] == 0 for r in recs))
                continue
            while len(pending) >= ra.in_flight * len(actors):
                collect()
            i = min(range(len(actors)), key=load.__getitem__)  # least loaded: slow nodes get less
            load[i] += 1
            # only what encoding needs travels to the worker; the driver keeps the records to commit
            slim = [{"title": r["title"], "text": r["text"], "lang": r["lang"]} for r in recs]
            pending[actors[i].encode.remote(no, slim)] = (no, recs, i)
        while pending:
            collect()
    finally:
        bar.close()
    return counts


def _connect(ray, ra: RayArgs) -> bool:
    """Start or join Ray; True when this build owns the session (and shuts it down)."""
    if ray.is_initialized():  # the caller's session (a notebook, a test fixture): use it as it is
        return False
    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    # Ray's notice that the cluster uses token authentication (its secure default) is noise in a build's log
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if ra.address in (None, "", LOCAL):
        cpus = os.cpu_count() or 1
        need = math.ceil((ra.actors or 1) * (ra.cpus_per_actor or 1))
        # more actors than cores is allowed (they share them); Ray must not leave any pending forever.
        # address="local" starts a private instance even when RAY_ADDRESS names a cluster
        ray.init(address="local", num_cpus=max(cpus, need), **kw)
        log.info("started a local Ray with %d CPU(s)", max(cpus, need))
    else:
        _check_reachable(ra.address)
        try:
            ray.init(address=ra.address, **kw)
        except ImportError as e:  # ray:// needs the Ray Client (grpcio), part of the extra
            raise ClirError(f"--ray {ra.address}: {e}; install the client with {INSTALL_HINT}") from None
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ClirError(f"--ray {ra.address}: cannot join the Ray cluster ({e})") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail fast where nothing listens: Ray itself retries a dead cluster's address for minutes."""
    import socket

    if address.startswith("ray://"):
        return  # the Ray Client fails quickly by itself
    try:  # Ray's own resolution of "auto" / RAY_ADDRESS / host:port (private: skipped if it moves)
        from ray._private.services import canonicalize_bootstrap_address

        resolved = canonicalize_bootstrap_address(address)
    except ConnectionError as e:
        raise ClirError(f"--ray {address}: {e}") from None
    except Exception:
        return
    if not resolved or ":" not in resolved:
        return
    host, port = resolved.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise ClirError(
            f"--ray {address}: no Ray cluster answers at {resolved} ({e}); start one with `ray start --head` "
            "or give its address (omit ADDRESS for a local Ray)"
        ) from None


def _plan(ray, ra: RayArgs) -> tuple[int, dict[str, Any]]:
    """Number of actors and their resource options, checked against the cluster."""
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [float(n["Resources"].get("CPU", 0)) for n in nodes if n["Resources"].get("CPU", 0) > 0]
    if ra.gpus_per_actor > 0:
        workers = ra.actors or int(gpus // ra.gpus_per_actor)
        if workers < 1:
            raise ClirError(
                f"--gpus-per-worker {ra.gpus_per_actor:g}: the Ray cluster has {gpus:g} GPU(s); "
                "give --ray-actors N to wait for GPU nodes an autoscaler will add"
            )
        cpus_per = ra.cpus_per_actor or 1.0
    else:
        workers = ra.actors or max(1, len(node_cpus))
        per_node = math.ceil(workers / max(1, len(node_cpus)))
        cpus_per = ra.cpus_per_actor or max(1.0, float(int(min(node_cpus or [1.0]) // per_node)))
    short = []
    if workers * ra.gpus_per_actor > gpus:
        short.append(f"{workers * ra.gpus_per_actor:g} GPU(s), it has {gpus:g}")
    if workers * cpus_per > cpus:
        short.append(f"{workers * cpus_per:g} CPU(s), it has {cpus:g}")
    if short:
        msg = f"{workers} worker(s) need {' and '.join(short)} in the Ray cluster"
        if ra.address in (None, "", LOCAL):
            raise ClirError(msg)
        log.warning("%s: workers will wait until an autoscaler adds nodes", msg)
    log.info(
        "encoding with %d Ray worker(s), %g CPU(s)%s each, on %d node(s)",
        workers,
        cpus_per,
        f" and {ra.gpus_per_actor:g} GPU(s)" if ra.gpus_per_actor else "",
        len(nodes),
    )
    opts = {
        "num_cpus": cpus_per,
        "num_gpus": ra.gpus_per_actor,
        "max_restarts": ra.max_retries,
        "max_task_retries": ra.max_retries,
        "scheduling_strategy": "SPREAD",
    }
    return workers, opts


def _await_workers(ray, ready: list[Any], fingerprint: dict[str, Any], model: str) -> None:
    """Wait for every actor's model; each must have loaded the driver's weights (nodes without a shared
    filesystem can hold different files under the same path)."""
    waiting = list(ready)
    while waiting:
        _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=60)
        if waiting:
            log.warning(
                "waiting for %d of %d Ray worker(s) to start (cluster resources: %s)",
                len(waiting),
                len(ready),
                ray.available_resources(),
            )
    for ref in ready:
        try:
            info = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        except ray.exceptions.RayActorError as e:
            raise ClirError(f"a Ray worker could not load --model {model}: {_reason(e)}") from None
        diff = sorted(k for k in fingerprint if info["fingerprint"].get(k) != fingerprint[k])
        if diff:
            raise ClirError(
                f"the Ray worker on {info['host']} loaded a different model for --model {model} "
                f"({', '.join(diff)} differ): every node needs the same model files at that path"
            )
        log.debug("worker pid %s on %s ready (%s)", info["pid"], info["host"], info["device"])


def _result(ray, ref: Any, no: int, ra: RayArgs, partial: Any, committed: int) -> np.ndarray:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise _unwrap(e) from None
    except ray.exceptions.RayActorError as e:
        raise ClirError(
            f"chunk {no}: its Ray worker died {ra.max_retries + 1} time(s) ({_reason(e)}); the {committed} "
            f"chunk(s) finished by this run are kept in {partial}: rerun with --resume"
        ) from None


def _unwrap(e: Exception) -> Exception:
    """A worker's ClirError is the user's error, as in a single-process build; anything else is a bug."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, ClirError) else e


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
