"""Dist without torchrun, and the deterministic split of batches and Linears between ranks."""

from __future__ import annotations

import pytest
import torch

from vq2trt.distributed import Dist


def test_single_process_stand_in(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = Dist.from_env()
    assert (d.rank, d.world, d.active, d.is_main) == (0, 1, False, True)
    t = torch.arange(4)
    assert d.all_reduce_sum(t) is t and d.all_gather_object("x") == ["x"] and d.broadcast_object(3) == 3
    assert d.own_batches(5) == [0, 1, 2, 3, 4] and d.assign([3.0, 1.0]) == [0, 0]


def test_batches_are_split_round_robin_and_cover_every_batch_once():
    parts = [Dist(r, 3).own_batches(8) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert sorted(b for p in parts for b in p) == list(range(8))


@pytest.mark.parametrize("world", [2, 3, 8])
def test_linears_go_longest_first_to_the_least_loaded_rank(world):
    # a LLaMA-3-70B layer: q, k, v, o, gate, up, down (N x K)
    costs = [8192 * 8192, 1024 * 8192, 1024 * 8192, 8192 * 8192, 28672 * 8192, 28672 * 8192, 8192 * 28672]
    owner = Dist(0, world).assign(costs)
    assert owner == Dist(world - 1, world).assign(costs)                 # every rank computes the same
    load = [sum(c for c, o in zip(costs, owner) if o == r) for r in range(world)]
    assert max(load) <= max(max(costs), sum(costs) / world * 4 / 3)     # LPT's bound
    if world == 2:
        assert owner == [1, 1, 1, 1, 0, 1, 0]                             # gate+down | up+q+k+v+o
