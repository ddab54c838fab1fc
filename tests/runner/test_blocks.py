"""Blocks of windows: fixed by window index, dealt to ranks, one shard per window and stage."""

import numpy as np

from spectra_interp.distributed import Dist
from spectra_interp.results.layout import SweepLayout
from spectra_interp.runner import blocks, own_shards


def test_blocks_are_fixed_by_window_index():
    got = [b.rows.tolist() for b in blocks(5, 2)]
    assert got == [[0, 1], [2, 3], [4]]


def test_own_shards_deal_every_shard_of_every_stage_to_exactly_one_rank(tmp_path):
    layout = SweepLayout(tmp_path)
    ids = np.array([3, 5, 8, 13, 21])
    dealt = [
        own_shards(ids, ["trained", "random_init"], 2, layout, Dist(rank=r, world_size=2))
        for r in range(2)
    ]
    assert all(dealt) and not set(dealt[0]) & set(dealt[1])
    every = {layout.relative_shard(s, int(w)) for s in ("trained", "random_init") for w in ids}
    assert set(dealt[0]) | set(dealt[1]) == every
