"""Two-sample drift tests of a batch against the reference, as "Failing Loudly" (Rabanser et al. 2019) ranks
them: Kolmogorov-Smirnov on each class's softmax output (Bonferroni-corrected over the classes), and a kernel
MMD permutation test on the model's embeddings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import ks_2samp

from groundwork.models.digitnet import DigitNet
from groundwork.params.adaptive import MonitorParams
from groundwork.training.loop import EVAL_BATCH, prepare_batch


@dataclass(frozen=True)
class DriftResult:
    """One batch's tests: p-values (KS already Bonferroni-corrected), decisions, and the alarm's reason."""

    ks_p: float
    ks_class: int  # the class whose softmax output differs most
    mmd: float
    mmd_p: float
    ks_drift: bool
    mmd_drift: bool
    alarm: bool
    reason: str

    def as_row(self) -> dict[str, float | int | bool | str]:
        """The result as one table row."""
        return asdict(self)


def ks_softmax(reference: np.ndarray, batch: np.ndarray) -> tuple[float, int]:
    """Bonferroni-corrected p-value of per-class KS tests on softmax outputs (N, classes), and the class with
    the smallest raw p-value."""
    p_values = np.array([ks_2samp(reference[:, c], batch[:, c]).pvalue for c in range(reference.shape[1])])
    worst = int(p_values.argmin())
    return float(min(1.0, p_values[worst] * len(p_values))), worst


def mmd_permutation(reference: np.ndarray, batch: np.ndarray, *, permutations: int,
                    seed: int) -> tuple[float, float]:
    """Squared MMD (biased estimate, Gaussian kernel with the median-distance bandwidth) between two samples of
    embeddings, and its permutation p-value: the share of label shuffles of the pooled sample (the observed
    split counted among them) whose MMD is at least the observed one."""
    pooled = torch.from_numpy(np.concatenate([reference, batch])).double()
    distances = torch.cdist(pooled, pooled).square_()
    bandwidth = distances[distances > 0].median().clamp_min(1e-12)
    kernel = torch.exp(-distances / bandwidth)
    n, total = len(reference), len(pooled)
    generator = torch.Generator().manual_seed(seed)
    # each row splits the pooled sample in two: the observed split first, then random shuffles of it
    orders = torch.stack([torch.arange(total), *(torch.randperm(total, generator=generator)
                                                 for _ in range(permutations))])
    first = torch.zeros(len(orders), total, dtype=torch.float64)
    first.scatter_(1, orders[:, :n], 1.0 / n)
    second = torch.zeros_like(first).scatter_(1, orders[:, n:], 1.0 / (total - n))
    weights = first - second  # MMD^2 = w^T K w for w = 1/n on one side, -1/m on the other
    statistics = ((weights @ kernel) * weights).sum(1)
    observed = statistics[0]
    return float(observed), float((statistics >= observed).double().mean())


def check_batch(reference: tuple[np.ndarray, np.ndarray], batch: tuple[np.ndarray, np.ndarray],
               cfg: MonitorParams, *, seed: int) -> DriftResult:
    """Both tests of a batch's (softmax, embeddings) against the reference's, and the alarm `cfg` asks for."""
    ks_p, ks_class = ks_softmax(reference[0], batch[0])
    mmd, mmd_p = mmd_permutation(reference[1], batch[1], permutations=cfg.permutations, seed=seed)
    ks_drift, mmd_drift = ks_p < cfg.alpha, mmd_p < cfg.alpha
    # "either" may reject through two tests, so each is held to alpha / 2 (Bonferroni): false alarms stay <= alpha
    alarm = {"ks": ks_drift, "mmd": mmd_drift, "either": ks_p < cfg.alpha / 2 or mmd_p < cfg.alpha / 2,
             "both": ks_drift and mmd_drift}[cfg.alarm_on]
    found = [f"KS on class {ks_class}'s softmax output p={ks_p:.2g}" if ks_drift else "",
             f"MMD on embeddings p={mmd_p:.2g}" if mmd_drift else ""]
    reason = " and ".join(part for part in found if part) or "no test rejected"
    level = cfg.alpha / 2 if cfg.alarm_on == "either" else cfg.alpha
    if found and not alarm:
        reason += f" at alpha={cfg.alpha}, not enough for an alarm (alarm_on={cfg.alarm_on}, each test at {level:g})"
    return DriftResult(ks_p, ks_class, mmd, mmd_p, ks_drift, mmd_drift, alarm,
                       reason + f" (alarm_on={cfg.alarm_on}, each test at {level:g})" if alarm else reason)


@torch.no_grad()
def model_outputs(model: DigitNet, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax outputs (N, classes) and embeddings (N, embedding_dim) of uint8 images, in eval mode: what both
    tests compare."""
    model.eval()
    cpu = torch.device("cpu")
    softmax, embeddings = [], []
    for start in range(0, len(images), EVAL_BATCH):
        embedding = model.backbone(prepare_batch(torch.from_numpy(images[start:start + EVAL_BATCH]), cpu))
        embeddings.append(embedding)
        softmax.append(model.head(embedding).softmax(-1))
    return torch.cat(softmax).numpy(), torch.cat(embeddings).numpy()
