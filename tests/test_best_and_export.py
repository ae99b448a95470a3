"""The best checkpoint, what retention keeps, which checkpoint a command picks, and what an export writes: pure
rules on ledgers and folders (the real-stack runs are in test_training_integration, test_faults, test_custom_loop)."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestration.cli import checkpoint_choice, parser
from orchestration.experiments import run_cache_key
from orchestration.export import MANIFEST, check_target, export_checkpoint
from orchestration.ledger import choose
from orchestration.types import CheckpointInfo, RunStatus
from ray_jobs.retention import best, kept_steps
from ray_jobs.specs import CustomTrainConfig, FineTuneConfig


def entry(step: int, tmp: Path | None = None, **metrics: float) -> CheckpointInfo:
    uri = str(tmp / f"step_{step}") if tmp else f"/nowhere/step_{step}"
    return CheckpointInfo(
        run_id="r",
        step=step,
        epoch=0.0,
        uri=uri,
        metrics={"step": float(step), **metrics},
        content_hash="sha256:x",
        created_at=datetime.now(timezone.utc),
        ray_job_id="r-a1",
    )


def test_best_is_the_finite_extreme_and_the_earliest_of_equals():
    ledger = [
        entry(1, eval_loss=0.5),
        entry(2),
        entry(3, eval_loss=0.3),
        entry(4, eval_loss=math.nan),
        entry(5, eval_loss=0.3),
    ]
    assert best(ledger, "eval_loss", "min").step == 3
    assert best(ledger, "eval_loss", "max").step == 1
    assert best(ledger, None, "min") is None
    assert best(ledger, "eval_accuracy", "max") is None  # no checkpoint reported it


def test_retention_keeps_the_newest_and_the_best():
    ledger = [entry(s, eval_loss=loss) for s, loss in [(10, 0.9), (20, 0.2), (30, 0.4), (40, 0.5), (50, 0.6)]]
    assert kept_steps(ledger, 2, "eval_loss", "min") == {20, 40, 50}
    assert kept_steps(ledger, 2, None, "min") == {40, 50}
    assert kept_steps(ledger, 3, "eval_loss", "max") == {30, 40, 50, 10}
    assert kept_steps(reversed(ledger), 1, "eval_loss", "min") == {20, 50}  # order of the input does not matter


def test_a_job_prunes_only_what_the_run_wide_rule_also_prunes():
    """The job sees its own checkpoints, the activity the whole run's: the job never deletes one the run keeps."""
    earlier = [entry(s, eval_loss=loss) for s, loss in [(5, 0.1), (10, 0.8)]]
    for job in ([(15, 0.7), (20, 0.05), (25, 0.9)], [(15, 0.7), (20, 0.3), (25, 0.2), (30, 0.6)]):
        own = [entry(s, eval_loss=loss) for s, loss in job]
        run_kept = kept_steps(earlier + own, 2, "eval_loss", "min")
        job_kept = kept_steps(own, 2, "eval_loss", "min")
        assert run_kept & {c.step for c in own} <= job_kept


def status_of(ledger: list[CheckpointInfo], metric: str | None = "eval_loss") -> RunStatus:
    return RunStatus(
        run_id="r",
        state="completed",
        step=ledger[-1].step,
        total_steps=None,
        latest_checkpoint=ledger[-1],
        best_checkpoint=best([c for c in ledger if not c.deleted], metric, "min"),
        best_metric=metric,
        checkpoints=ledger,
        resumes=0,
        ray_job_id=None,
        snapshot_id=None,
        attempts=[],
    )


def test_a_command_picks_a_step_the_best_or_the_newest():
    ledger = [entry(10, eval_loss=0.2), entry(20), entry(30, eval_loss=0.4)]
    status = status_of(ledger)
    assert choose(status, ledger, None, best=False).step == 30
    assert choose(status, ledger, None, best=True).step == 10
    assert choose(status, ledger, 20, best=True).step == 20  # a step given wins
    assert choose(status_of(ledger, metric=None), ledger, None, best=True).step == 30  # no metric: the newest
    with pytest.raises(ValueError, match="no checkpoint that reported 'eval_accuracy' yet"):
        choose(status_of(ledger[1:2], metric="eval_accuracy"), ledger[1:2], None, best=True)
    deleted = [ledger[0].model_copy(update={"deleted": True}), *ledger[1:]]
    with pytest.raises(ValueError, match=r"step 10 was deleted .* available steps: \[20, 30\]"):
        choose(status_of(deleted), deleted[1:], 10, best=False)
    with pytest.raises(ValueError, match="step 7 was never committed"):
        choose(status, ledger, 7, best=False)
    # the job pruned the ledger's best for a better one, a poll before the ledger heard: the best of what is there
    assert choose(status_of(ledger), [ledger[1], entry(40, eval_loss=0.1)], None, best=True).step == 40


def test_the_checkpoint_option_reads_a_step_best_or_latest():
    assert checkpoint_choice("best") == (None, True)
    assert checkpoint_choice("latest") == (None, False)
    assert checkpoint_choice("40") == (40, False)
    assert parser().parse_args(["export", "r", "d"]).checkpoint == (None, True)  # export: the best by default
    assert parser().parse_args(["eval", "r"]).checkpoint == (None, False)  # eval: the newest, as before
    for bad in ("0", "-3", "bestest"):
        with pytest.raises(Exception, match="is not a step, best or latest"):
            checkpoint_choice(bad)


def write_checkpoint(root: Path, step: int) -> CheckpointInfo:
    folder = root / f"step_{step}"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    for name in ("optimizer.pt", "scheduler.pt", "train_state.json"):
        (folder / name).write_text("resume only")
    info = entry(step, root, eval_loss=0.1)
    return info.model_copy(update={"content_hash": "sha256:" + hashlib.sha256(b"weights").hexdigest()})


def test_an_export_of_a_text_run_leaves_out_what_only_resuming_needs(tmp_path):
    info = write_checkpoint(tmp_path / "store", 40)
    target = tmp_path / "out"
    done = export_checkpoint(info, target, "text", FineTuneConfig(), best=info)
    assert done.files == ["config.json", "model.safetensors", "tokenizer/vocab.txt"]
    assert done.is_best and done.best_metric == "eval_loss" and done.step == 40
    assert "sha256:" + hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest() == info.content_hash
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["run_id"] == "r" and manifest["config"]["kind"] == "text"


def test_an_export_of_a_custom_run_copies_its_checkpoint_whole(tmp_path):
    info = write_checkpoint(tmp_path / "store", 7)
    config = CustomTrainConfig(entrypoint="pkg.mod:fn", max_steps=7)
    done = export_checkpoint(info, tmp_path / "out", "custom", config, best=None)
    assert "optimizer.pt" in done.files and "train_state.json" in done.files and not done.is_best


def test_an_export_never_writes_into_a_folder_with_files_nor_from_a_deleted_checkpoint(tmp_path):
    info = write_checkpoint(tmp_path / "store", 40)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not an empty folder"):
        check_target(tmp_path / "full")
    with pytest.raises(ValueError, match="is a URI"):
        check_target("s3://bucket/model")
    gone = info.model_copy(update={"uri": str(tmp_path / "store" / "step_99")})
    with pytest.raises(ValueError, match="no longer in storage"):
        export_checkpoint(gone, tmp_path / "new", "text", FineTuneConfig(), best=None)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_choosing_the_best_checkpoint_does_not_change_the_run_cache_key():
    """A cached run is the same trained model whichever checkpoint counts as the best."""
    base = FineTuneConfig()
    assert run_cache_key("s", base) == run_cache_key("s", FineTuneConfig(best_metric="eval_accuracy", best_mode="max"))
    assert run_cache_key("s", base) != run_cache_key("s", FineTuneConfig(eval_every_steps=10))
    assert run_cache_key("s", base) == "run-1f51452b770cdf38086f586a"  # the key the release before wrote


def test_an_export_that_fails_halfway_leaves_nothing_behind(tmp_path):
    info = write_checkpoint(tmp_path / "store", 40)
    (Path(info.uri) / MANIFEST).write_text("the loop's own")  # export cannot write its manifest: it fails at the end
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=f"holds a file named {MANIFEST}"):
        export_checkpoint(info, tmp_path / "out", "custom", CustomTrainConfig(entrypoint="a:b", max_steps=1), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "store"] and not any((tmp_path / "out").iterdir())
    (Path(info.uri) / MANIFEST).unlink()
    done = export_checkpoint(info, tmp_path / "out", "text", FineTuneConfig(), None)  # the empty folder is reused
    assert (tmp_path / "out" / "model.safetensors").exists() and not done.is_best


def test_a_best_metric_no_job_reports_is_refused_with_the_ones_it_can_be():
    with pytest.raises(ValueError, match=r"best_metric 'eval_acc' is never reported: use one of \[.*'eval_accuracy'"):
        FineTuneConfig(best_metric="eval_acc")
    assert FineTuneConfig(best_metric=None).best_metric is None


def commit(spec, step: int, score: float) -> Path:
    from ray_jobs import storage
    from ray_jobs.job_runner import run_dir
    from ray_jobs.outcome import CommittedCheckpoint, commit_record_uri, job_dir

    folder = Path(job_dir(run_dir(spec), spec.ray_job_id)) / f"step_{step:08d}"
    folder.mkdir(parents=True)
    record = CommittedCheckpoint(
        step=step,
        epoch=0.0,
        uri=str(folder),
        metrics={"eval_loss": score},
        content_hash="sha256:x",
        created_at=0.0,
        ray_job_id=spec.ray_job_id,
    )
    storage.write_json(commit_record_uri(run_dir(spec), spec.ray_job_id, step), record.model_dump(mode="json"))
    return folder


def test_a_job_promoted_in_place_prunes_by_what_the_next_segments_ledger_holds(tmp_path):
    """Warm promotion: the job trains on for the next segment's run, whose ledger starts at the rung checkpoint.
    The rung before it had a better score (step 7), which that ledger never sees: the job must not keep 7 and delete
    the best the ledger knows (step 11)."""
    from ray_jobs import storage
    from ray_jobs.job_runner import prune, run_dir
    from ray_jobs.outcome import Promotion, promotion_uri
    from ray_jobs.specs import JobSpec

    config = FineTuneConfig(keep_last=2, max_steps=20)
    spec = JobSpec(run_id="t-r0", ray_job_id="t-r0-a1", config=config, snapshot_uri="x", storage_path=str(tmp_path))
    folders = {step: commit(spec, step, score) for step, score in [(7, 0.1), (10, 0.5)]}
    prune(spec)
    assert all(f.exists() for f in folders.values())
    offer = Promotion(stop_at_step=20, park_s=0.0)
    storage.write_json(promotion_uri(run_dir(spec), spec.ray_job_id, 10), offer.model_dump(mode="json"))
    for step, score in [(11, 0.3), (12, 0.6), (13, 0.7)]:
        folders[step] = commit(spec, step, score)
        prune(spec)
    assert {s for s, f in folders.items() if f.exists()} == {7, 11, 12, 13}  # 10 pruned; 7 is the last run's to keep
    next_ledger = [entry(s, eval_loss=v) for s, v in [(10, 0.5), (11, 0.3), (12, 0.6), (13, 0.7)]]
    assert kept_steps(next_ledger, 2, "eval_loss", "min") == {11, 12, 13}  # the same rule, the same answer
