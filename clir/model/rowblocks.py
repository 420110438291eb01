"""Row blocks for matrix products whose rounding depends on how many rows they hold.

Some CPU kernels pick their blocking by the number of rows: oneDNN's bf16 kernels on AMX compute a row of a
1536-wide product differently in a product of 33-383 rows than in one of 32 or fewer (one bf16 step, up to
~8e-4 on a final e5-small vector), so a query encoded in a batch differed from the same query encoded alone
(`clir search --query`), and 13% of top-10s over xquad-r/de swapped near-tied documents. Cut into blocks of
at most 32 rows, every row comes out as it does alone. Which shapes need blocks, and how small, is the
kernel's business: :func:`row_block` measures it once per weight shape, dtype and device."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

#: Block sizes tried, largest first (a block smaller than 8 rows would cost more than packing saves).
BLOCKS = (32, 16, 8)
#: Row counts that must all give a lone row's results for a shape to need no blocks at all.
_FREE_ROWS = (*range(1, 65), 96, 128, 200, 256, 384, 512, 1000)

_cache: dict[tuple[int, int, str, str], int | None] = {}


def row_block(in_features: int, out_features: int, dtype: Any, device: Any) -> int | None:
    """Rows a product with an (out_features, in_features) weight may hold so that each row equals its
    product alone, on this device and dtype at the calling thread's thread count: 0 for any number, a block
    size from :data:`BLOCKS`, or None when no block size does (measured on seeded random data)."""

    key = (in_features, out_features, str(dtype), str(device))
    if key in _cache:
        return _cache[key]
    # several draws: on some CPUs (AMD EPYC with AVX512-BF16) whether rows round alike depends on the values
    # too, and one draw passed blocks that fresh data broke; a block must hold for every draw
    found: int | None = 0
    for seed, scale in _DRAWS:
        found = _probe(in_features, out_features, dtype, device, seed, scale, found)
        if found is None:
            break
    if found is None:
        log.info(
            "%s products of %d x %d weights round by the row count whatever the block: batched vectors "
            "may differ from lone ones within that rounding",
            dtype,
            out_features,
            in_features,
        )
    _cache[key] = found
    return found


#: (seed, weight scale) of the probe's draws: weights as a trained layer's (1/sqrt(in)) and unit ones
_DRAWS = ((0, "fan-in"), (1, "unit"), (2, "fan-in"))


def _probe(k: int, n: int, dtype: Any, device: Any, seed: int, scale: str, found: int | None) -> int | None:
    """The largest block (0: none needed) no larger than ``found`` that holds on one seeded draw."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (k**-0.5 if scale == "fan-in" else 1.0)
    w, b = w.to(device, dtype), torch.randn(n, generator=g).to(device, dtype)
    x = torch.randn(max(_FREE_ROWS), k, generator=g).to(device, dtype)
    with torch.inference_mode():
        alone = torch.cat([F.linear(x[i : i + 1], w, b) for i in range(len(x))])

        def rows_match(counts: Iterable[int], offset: int = 0) -> bool:
            return all(
                torch.equal(F.linear(x[offset : offset + m], w, b), alone[offset : offset + m])
                for m in counts
            )

        if found == 0 and rows_match(_FREE_ROWS) and rows_match([295, 300], 5):
            return 0
        # every count up to the block, at two offsets: a pack's blocks start anywhere
        sizes = [m for m in BLOCKS if found in (0, None) or m <= found]
        return next((m for m in sizes if rows_match(range(1, m + 1)) and rows_match([m], 7)), None)


def linear_shapes(model: Any) -> list[tuple[int, int]]:
    """(in_features, out_features) of every Linear layer of ``model``, each shape once."""
    import torch

    return sorted(
        {(m.in_features, m.out_features) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    )


def model_row_blocks(model: Any, dtype: Any, device: Any) -> dict[tuple[int, int], int]:
    """(in_features, out_features) -> block size for each Linear shape of ``model`` that needs blocks."""
    blocks = {s: row_block(*s, dtype, device) for s in linear_shapes(model)}
    return {s: n for s, n in blocks.items() if n}
