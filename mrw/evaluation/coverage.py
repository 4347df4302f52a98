"""Which items a submission is evaluated on, and whether its numbers compare with published ones."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mrw import paths
from mrw.errors import UsageError
from mrw.evaluation.groundtruth import COCO_FOLD_SIZE, GroundTruth

LISTED_LEFT_OUT = 20  # left-out ids named in the results; the count says the rest


@dataclass(frozen=True)
class Coverage:
    """Items of the split that the evaluation left out, and why."""

    catalog_items: int
    left_out_ids: tuple[str, ...]
    allowed: bool  # True: `--allow-missing`; False: every one failed in the pipeline

    @property
    def left_out(self) -> int:
        return len(self.left_out_ids)

    @property
    def evaluated_items(self) -> int:
        return self.catalog_items - self.left_out

    @property
    def why(self) -> str:
        if self.allowed:
            return "allowed (--allow-missing)"
        return "failed in the pipeline (their status rows say so)"

    def to_json(self) -> dict:
        return {
            "catalog_items": self.catalog_items,
            "evaluated_items": self.evaluated_items,
            "left_out": self.left_out,
            "left_out_ids": list(self.left_out_ids[:LISTED_LEFT_OUT]),
            "why": self.why,
        }


@dataclass
class Selection:
    """What is evaluated: the ground truth of the kept items and the submission narrowed to them.

    `sentence_rows`: rows of the submission's sentence arrays that belong to kept items (in the
    order of its `sentence_ids`, which then lists only those), out of `sentences_given` rows.
    """

    gt: GroundTruth
    preds: dict
    coverage: Coverage | None = None
    sentence_rows: np.ndarray | None = None
    sentences_given: int | None = None


def failed_items(root: str | os.PathLike[str] | None, dataset: str, split: str) -> set[str]:
    """Ids that a stage of the split recorded as failed (download, frames or any features)."""
    from mrw.shards import read_status, status_shards

    stages = [paths.videos_dir(root, dataset, split), paths.frames_dir(root, dataset, split)]
    stages += paths.features_dirs(root, dataset, split)
    failed: set[str] = set()
    for stage in stages:
        if status_shards(stage):
            status = read_status(stage)
            failed.update(
                i
                for i, st in zip(
                    status.column("id").to_pylist(), status.column("status").to_pylist()
                )
                if st == "failed"
            )
    return failed


def _item_of(sentence_id: object) -> str | None:
    return sentence_id.rsplit("#", 1)[0] if isinstance(sentence_id, str) else None


def _submitted_items(preds: dict) -> list | None:
    """The item ids the submission names, when it names them (None: every item, in order)."""
    if "rankings" in preds:
        rankings = preds["rankings"]
        table = rankings.get("i2t") if isinstance(rankings, dict) else None
        return list(table) if isinstance(table, dict) else None
    ids = preds.get("item_ids")
    return ids if isinstance(ids, list) and all(isinstance(i, str) for i in ids) else None


def _without_items(preds: dict, gone: set[str]) -> tuple[dict, np.ndarray | None, int | None]:
    """The submission without the sentences (and ranked candidates) of the items in `gone`."""
    preds = dict(preds)
    if "rankings" in preds and isinstance(preds["rankings"], dict):
        rankings = dict(preds["rankings"])
        if isinstance(rankings.get("t2i"), dict):
            rankings["t2i"] = {
                q: [c for c in lst if c not in gone] if isinstance(lst, list) else lst
                for q, lst in rankings["t2i"].items()
                if _item_of(q) not in gone
            }
        if isinstance(rankings.get("i2t"), dict):
            rankings["i2t"] = {
                q: [c for c in lst if _item_of(c) not in gone] if isinstance(lst, list) else lst
                for q, lst in rankings["i2t"].items()
            }
        preds["rankings"] = rankings
        return preds, None, None
    if isinstance(preds.get("sentence_ids"), list):
        sids = preds["sentence_ids"]
        rows = np.array(
            [n for n, sid in enumerate(sids) if _item_of(sid) not in gone], dtype=np.int64
        )
        preds["sentence_ids"] = [sids[n] for n in rows]
        return preds, rows, len(sids)
    return preds, None, None


def leave_out_missing(
    preds: dict,
    gt: GroundTruth,
    root: str | os.PathLike[str] | None,
    allow_missing: bool,
    where: str,
) -> Selection:
    """Items of the split that the submission lacks are left out of the evaluation when the
    pipeline failed on them (a dead link, a clip that does not decode: no method could rank
    them), or anyway with `allow_missing`; any other gap is an error."""
    ids = _submitted_items(preds)
    if ids is None:
        return Selection(gt, preds)
    given = set(ids)
    keep = np.fromiter((i in given for i in gt.item_ids), dtype=bool, count=gt.num_items)
    if keep.all() or not keep.any() or any(i not in gt.item_index for i in given):
        return Selection(gt, preds)  # complete, or ids amiss: the checks will say which
    missing = [i for i, k in zip(gt.item_ids, keep) if not k]
    if not allow_missing:
        failed = failed_items(root, gt.dataset, gt.split)
        unexplained = [i for i in missing if i not in failed]
        if unexplained:
            label = "rankings.i2t keys" if "rankings" in preds else "item_ids"
            raise UsageError(
                f"{where}: {label}: {len(missing)} id(s) of the split missing, e.g. {unexplained[0]!r}; "
                f"{len(unexplained)} of them did not fail in any stage under this root "
                "(--allow-missing evaluates the submitted items alone)"
            )
    coverage = Coverage(gt.num_items, tuple(missing), allow_missing)
    narrowed, rows, count = _without_items(preds, set(missing))
    return Selection(gt.subset(keep), narrowed, coverage, rows, count)


def not_comparable_because(
    protocol: str, num_folds: int, gt: GroundTruth, coverage: Coverage | None
) -> list[str]:
    """Why one protocol's numbers do not compare with the published ones (empty: they do)."""
    from mrw.descriptors import load_descriptor

    descriptor = load_descriptor(gt.dataset)
    spec = descriptor.get("protocol", {})
    test_split = spec.get("evaluation_split", "test")
    reasons = []
    if gt.split != test_split:
        reasons.append(f"the {gt.split} split; the published results are on {test_split}")
    published = descriptor["splits"].get(test_split, {}).get("items")
    catalog_items = coverage.catalog_items if coverage else gt.num_items
    if gt.split == test_split and published is not None and catalog_items != published:
        reasons.append(f"{catalog_items:,} of the published {published:,} {test_split} items")
    if coverage is not None:
        what = "--allow-missing" if coverage.allowed else "failed in the pipeline"
        reasons.append(f"{coverage.left_out:,} items missing ({what})")
    if gt.all_sentences:
        reasons.append("all sentences instead of the protocol's")
    elif published is not None and gt.split == test_split and not reasons:
        per_item = descriptor["splits"][test_split].get(
            "sentences_per_item", spec.get("sentences_per_item")
        )
        if per_item is not None and gt.num_sentences != published * per_item:
            reasons.append(
                f"{gt.num_sentences:,} sentences instead of the protocol's {published * per_item:,}"
            )
    if protocol == "1k" and published is not None and num_folds != published // COCO_FOLD_SIZE:
        reasons.append(
            f"{num_folds} folds of {COCO_FOLD_SIZE:,} instead of {published // COCO_FOLD_SIZE}"
        )
    return reasons
