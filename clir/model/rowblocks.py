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
    import torch
    import torch.nn.functional as F

    key = (in_features, out_features, str(dtype), str(device))
    if key in _cache:
        return _cache[key]
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(out_features, in_features, generator=g) * in_features**-0.5).to(device, dtype)
    b = torch.randn(out_features, generator=g).to(device, dtype)
    x = torch.randn(max(_FREE_ROWS), in_features, generator=g).to(device, dtype)
    with torch.inference_mode():
        alone = torch.cat([F.linear(x[i : i + 1], w, b) for i in range(len(x))])

        def rows_match(counts: Iterable[int], offset: int = 0) -> bool:
            return all(
                torch.equal(F.linear(x[offset : offset + m], w, b), alone[offset : offset + m])
                for m in counts
            )

        if rows_match(_FREE_ROWS):
            found: int | None = 0
        else:
            # every count up to the block, at two offsets: a pack's blocks start anywhere
            found = next((n for n in BLOCKS if rows_match(range(1, n + 1)) and rows_match([n], 7)), None)
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
