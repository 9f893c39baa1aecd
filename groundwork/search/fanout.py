"""Random search's candidates (and the agent's warm-up episodes, which play random candidates too) scored on the
jobs' engine (groundwork.training.jobs): worker processes on this machine, or a Dask cluster's workers when a
scheduler is set. These candidates are drawn without looking at any score, so they are all known before the search
starts; with the distilled reward each one is a short fine-tune, most of the stage's time. The distinct ones are
dealt round-robin into batches, each batch scored by a scorer of its own in a worker, and the scores handed to the
stage's scorer, where random search and then the agent find them. A candidate's score does not depend on where or
in which order it is computed (the distilled reward seeds each fine-tune by the candidate's widths), so the
search's results are the same as when every candidate is scored in the stage's own process, but for the
thread-count caveat of docs/distributed.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from groundwork.data.datasets import Dataset, load_dataset
from groundwork.models.checkpoint import load_model
from groundwork.models.digitnet import DigitNet
from groundwork.params import Params
from groundwork.search.compare import Budget, Prescore, compare_methods
from groundwork.search.methods import Candidate, SearchResult
from groundwork.search.scoring import AdaptiveBNScorer, make_scorer
from groundwork.training.distributed import resolve_device
from groundwork.training.jobs import run_jobs, scheduler_address

log = logging.getLogger(__name__)
SEARCH_SPLITS = ("train", "val", "pool")  # what a scorer reads: val scores, pool recalibrates, train distils
BATCHES_PER_WORKER = 3  # each batch builds its own scorer (about a second); more batches even out the last round
CLUSTER_BATCH = 8  # on a Dask cluster of one's own (its size unknown here): at most this many candidates a batch


@dataclass(frozen=True)
class ScoringJob:
    """One batch of candidates, and what a worker needs to build the stage's scorer for them."""

    params: Params
    transferred: Path
    target: Path
    candidates: tuple[Candidate, ...]
    batch: int  # 0-based
    batches: int

    def __str__(self) -> str:  # how an error of groundwork.training.jobs names it
        return f"search candidates, batch {self.batch + 1} of {self.batches}"


def score_batch(job: ScoringJob) -> list[float]:
    """The job's candidates' rewards, in order, by a scorer built as the search stage builds its own."""
    model, _ = load_model(job.transferred)
    data, _ = load_dataset(job.target, splits=SEARCH_SPLITS)
    scorer = make_scorer(job.params, model, data, device=resolve_device(job.params.device))
    return [scorer(keeps, precisions) for keeps, precisions in job.candidates]


def scoring_jobs(params: Params, candidates: Sequence[Candidate], *, transferred: Path, target: Path,
                 batches: int) -> list[ScoringJob]:
    """`candidates` dealt round-robin into at most `batches` batches (widths vary along the draws, and with
    them a candidate's cost: dealing mixes them)."""
    count = max(1, min(batches, len(candidates)))
    return [ScoringJob(params, transferred, target, tuple(candidates[batch::count]), batch, count)
            for batch in range(count)]


def prescorer(params: Params, scorer: AdaptiveBNScorer, *, transferred: Path, target: Path,
              workers: int) -> Prescore | None:
    """What scores the random candidates ahead on the jobs' engine, into `scorer`'s memory; None where
    they are best scored in this process as random search reaches them: one worker and no scheduler set, or a
    reward that takes a fraction of a second (adaptive_bn: starting the workers would cost more)."""
    if params.search.reward != "distilled" or (workers <= 1 and scheduler_address() is None):
        return None

    def prescore(candidates: Sequence[Candidate]) -> None:
        todo = scorer.unscored(candidates)
        if not todo:
            return
        batches = BATCHES_PER_WORKER * workers
        if (address := scheduler_address()) is not None:
            batches = max(batches, math.ceil(len(todo) / CLUSTER_BATCH))
        jobs = scoring_jobs(params, todo, transferred=transferred, target=target, batches=batches)
        log.info("random candidates: %d distinct of %d, scored ahead in %d batches %s", len(todo), len(candidates),
                 len(jobs), f"on the Dask cluster at {address}" if address else f"in {workers} process(es)")
        with tqdm(total=len(todo), desc="search random (workers)", unit="candidate", disable=None) as bar:
            for job, scores in zip(jobs, run_jobs(score_batch, jobs, workers), strict=True):
                scorer.remember(job.candidates, scores)
                bar.update(len(scores))
    return prescore


def search_methods(params: Params, model: DigitNet, data: Dataset, *, transferred: Path, target: Path, budget: Budget,
                   workers: int) -> dict[str, SearchResult]:
    """The search stage's search: every method under `budget`, scored by the params' reward, the random candidates
    scored ahead in `workers` processes (or on the Dask cluster set) where `prescorer` says so. `model` and `data`
    are what `transferred` and `target` hold (the workers read the files)."""
    score = make_scorer(params, model, data, device=resolve_device(params.device))
    return compare_methods(model, params.search, score=score, cost=budget.cost, budget=budget.limit, seed=params.seed,
                           prescore=prescorer(params, score, transferred=transferred, target=target, workers=workers))
