"""Deterministic batch order, per-rank shares, padding trim, RNG seeds and the checkpoint ledger's rules."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import torch

from orchestration.ledger import newest, record
from orchestration.types import CheckpointInfo
from ray_jobs.checkpointing import checkpoint_dir_name, step_seed
from ray_jobs.sampling import batch_indices, epoch_order
from ray_jobs.text_data import trim_padding

# --- batch order ----------------------------------------------------------------------------------------------------


def test_epoch_order_is_a_deterministic_permutation():
    a = epoch_order(100, seed=7, epoch=0)
    b = epoch_order(100, seed=7, epoch=0)
    assert torch.equal(a, b)
    assert sorted(a.tolist()) == list(range(100))


def test_epoch_order_differs_across_epochs_and_seeds():
    orders = [epoch_order(100, seed=7, epoch=e) for e in range(3)]
    assert not torch.equal(orders[0], orders[1])
    assert not torch.equal(orders[1], orders[2])
    assert not torch.equal(epoch_order(100, seed=8, epoch=0), orders[0])


def test_epoch_order_ignores_global_torch_rng():
    torch.manual_seed(0)
    a = epoch_order(50, seed=3, epoch=1)
    torch.manual_seed(12345)
    torch.rand(10)
    assert torch.equal(a, epoch_order(50, seed=3, epoch=1))


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_partition_the_global_batch(world):
    batch_size = 8
    order = epoch_order(37, seed=11, epoch=2)
    for pos in range(37 // batch_size):
        expected = order[pos * batch_size : (pos + 1) * batch_size].tolist()
        shares = [batch_indices(order, pos, batch_size, rank, world).tolist() for rank in range(world)]
        assert all(len(s) == batch_size // world for s in shares)
        flat = [i for s in shares for i in s]
        assert len(flat) == len(set(flat)) == batch_size
        assert sorted(flat) == sorted(expected)


def test_batches_over_an_epoch_cover_each_row_once():
    order = epoch_order(32, seed=1, epoch=0)
    seen = [i for pos in range(4) for rank in range(2) for i in batch_indices(order, pos, 8, rank, 2).tolist()]
    assert sorted(seen) == list(range(32))


def test_trim_padding_removes_all_padding_columns():
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    ids = torch.arange(18).reshape(3, 6) * mask
    labels = torch.tensor([0, 1, 0])
    out = trim_padding({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert out["input_ids"].shape == (3, 4)
    assert out["attention_mask"].shape == (3, 4)
    assert torch.equal(out["input_ids"], ids[:, :4])
    assert torch.equal(out["attention_mask"], mask[:, :4])
    assert torch.equal(out["labels"], labels)


def test_trim_padding_keeps_full_rows():
    mask = torch.ones(2, 5, dtype=torch.long)
    out = trim_padding({"input_ids": torch.ones(2, 5), "attention_mask": mask, "labels": torch.tensor([1.0, 2.0])})
    assert out["input_ids"].shape == (2, 5)


# --- checkpointing --------------------------------------------------------------------------------------------------


def test_step_seed_differs_across_step_and_rank():
    seeds = {step_seed(42, step, rank) for step in range(50) for rank in range(8)}
    assert len(seeds) == 50 * 8
    assert step_seed(42, 3, 1) == step_seed(42, 3, 1)
    assert step_seed(42, 3, 1) != step_seed(43, 3, 1)
    assert 0 <= step_seed(2**62, 10**9, 3) < 2**63


def test_checkpoint_dir_names_sort_by_step():
    names = [checkpoint_dir_name(s) for s in (5, 100, 20, 1000)]
    assert sorted(names) == [checkpoint_dir_name(s) for s in (5, 20, 100, 1000)]
    assert checkpoint_dir_name(5) == "step_00000005"


# --- ledger ---------------------------------------------------------------------------------------------------------


def ckpt(step: int, uri: str | None = None) -> CheckpointInfo:
    return CheckpointInfo(
        run_id="run-1",
        step=step,
        epoch=step / 10,
        uri=uri or f"/store/run-1/{checkpoint_dir_name(step)}",
        metrics={"loss": 1.0 / (step + 1)},
        content_hash=f"sha256:{step:064x}",
        created_at=datetime(2025, 1, 1, tzinfo=timezone.utc),
        ray_job_id="job-1",
    )


def test_record_keeps_step_order():
    ledger: list[CheckpointInfo] = []
    for step in (10, 30, 20, 5):
        assert record(ledger, ckpt(step)) is True
    assert [c.step for c in ledger] == [5, 10, 20, 30]


def test_record_ignores_duplicate_step():
    ledger: list[CheckpointInfo] = []
    first = ckpt(10)
    assert record(ledger, first) is True
    assert record(ledger, ckpt(10, uri="/elsewhere")) is False
    assert ledger == [first]
    assert record(ledger, ckpt(20)) is True
    assert [c.step for c in ledger] == [10, 20]


def test_newest_picks_highest_step_and_handles_none():
    assert newest() is None
    assert newest(None, None) is None
    a, b = ckpt(10), ckpt(40)
    assert newest(a) is a
    assert newest(None, a) is a
    assert newest(b, None, a) is b
    assert newest(a, b) is b
