"""`mrw evaluate` (the package): the standard cross-modal retrieval protocol over a `preds.json` submission.

The protocol is the one of the reference code (yalesong/pvse `eval.py`, which follows VSE++),
restated here so that it can be checked (interfaces.md, section 4):

- the rank of a query is the number of *wrong* candidates scoring >= the best-scoring right one,
  so ties count against the submission and constant scores cannot score well;
- R@K = 100 x the share of queries with rank < K; MedR = floor(median(rank)) + 1;
  MeanR = mean(rank) + 1; nMR = MedR / number of candidates; rsum = the six recalls summed;
- i2t: one query per item, its right answers are all its sentences (the best-ranked one counts);
  t2i: one query per sentence, its one right answer is its item;
- with K embeddings per instance, a pair scores the maximum of its K x K dot products;
- MRW and TGIF: the whole test split (`full`); COCO: `5k` (all test images) and `1k` (every metric
  averaged over five folds of 1,000 consecutive test images and their captions).

Where the reference code differs, and what this evaluator does instead:

- Ties. The reference sorts with `np.argsort` and takes the position of the right answer, so
  among equal scores the order is whatever the sort leaves; constant scores can then score
  perfectly. Here every tie counts against the submission. On inputs without ties both agree.
- nMR. The reference divides MedR by `img_embs.shape[0]`, the number of caption rows (images are
  repeated once per caption for COCO), for both directions and even inside the 1k folds. Here nMR
  divides by the number of candidates the query ranked: sentences for i2t, items for t2i, within
  the protocol's candidate set. MRW and TGIF (one sentence per item) give the same numbers.
- 5-fold rsum. The reference prints `mean_metrics[-1] * 6` where `mean_metrics[-1]` is already
  the mean rsum, six times too large. Here the 1k rsum is the mean of the five folds' rsums, which
  is also the sum of the six mean recalls.
- Precision. The reference scores in float64 on the CPU and float32 on the GPU. Here every rank
  from embeddings is the float64 protocol's, on any BLAS, thread count or device: float32 block
  products decide every candidate provably clear of the query's threshold, and those within the
  rounding bound of it are scored again in float64 (`scoring`). Score matrices given as `scores`
  are compared as given (in float64).
- Speed. The reference loops over queries in Python and re-sorts every candidate list. Here the
  rank is a count (`>=` against a threshold), so no sort is needed and memory stays bounded.

Truncated `rankings` (top k >= 10) keep R@1/5/10 exact; MedR and MeanR are reported where the
lists bound them exactly (a lower and an upper bound of every rank are carried through), else
`null` with the reason.

Modules: `protocol` (metrics of ranks), `scoring` (ranks from scores and embeddings),
`groundtruth` (the catalog's right answers), `submission` (reading and checking `preds.json`),
`coverage` (items left out, comparability), `report` (table, leaderboard, plot), `command`.
"""

from mrw.evaluation.command import (
    check_output_path,
    evaluate_submission,
    run_evaluate,
)
from mrw.evaluation.coverage import (
    Coverage,
    Selection,
    failed_items,
    leave_out_missing,
    not_comparable_because,
)
from mrw.evaluation.groundtruth import COCO_FOLD_SIZE, GroundTruth, load_ground_truth
from mrw.evaluation.protocol import (
    DIRECTIONS,
    METRICS,
    RECALL_KS,
    Ranks,
    direction_metrics,
    mean_rank,
    median_rank,
    protocol_metrics,
    recall_at_k,
    recall_curve,
)
from mrw.evaluation.report import (
    format_leaderboard,
    format_results,
    leaderboard_path,
    load_leaderboard,
    plot_recall_curves,
)
from mrw.evaluation.scoring import (
    DEFAULT_BLOCK_BYTES,
    BlockScorer,
    RankCounter,
    best_right_scores,
    exact_pair_scores,
    ranks_from_embeddings,
    ranks_from_scores,
    relative_dot_bound,
)
from mrw.evaluation.submission import (
    KINDS,
    MAX_MODEL_CHARS,
    MIN_RANKING_LENGTH,
    TOP_LEVEL_KEYS,
    EmbeddingSubmission,
    RankingSubmission,
    ScoreSubmission,
    Submission,
    load_submission,
    read_preds,
)

__all__ = [
    "COCO_FOLD_SIZE",
    "DEFAULT_BLOCK_BYTES",
    "DIRECTIONS",
    "KINDS",
    "MAX_MODEL_CHARS",
    "METRICS",
    "MIN_RANKING_LENGTH",
    "RECALL_KS",
    "TOP_LEVEL_KEYS",
    "BlockScorer",
    "Coverage",
    "EmbeddingSubmission",
    "GroundTruth",
    "RankCounter",
    "RankingSubmission",
    "Ranks",
    "ScoreSubmission",
    "Selection",
    "Submission",
    "best_right_scores",
    "check_output_path",
    "direction_metrics",
    "evaluate_submission",
    "exact_pair_scores",
    "failed_items",
    "format_leaderboard",
    "format_results",
    "leaderboard_path",
    "leave_out_missing",
    "load_ground_truth",
    "load_leaderboard",
    "load_submission",
    "mean_rank",
    "median_rank",
    "not_comparable_because",
    "plot_recall_curves",
    "protocol_metrics",
    "ranks_from_embeddings",
    "ranks_from_scores",
    "read_preds",
    "recall_at_k",
    "recall_curve",
    "relative_dot_bound",
    "run_evaluate",
]
