"""Figures the stages write (PNG, via matplotlib's non-interactive backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.ticker

matplotlib.use("Agg")  # no display on servers and CI; selected before pyplot is imported
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from groundwork.data.atomic import atomic_path


def _save(figure: plt.Figure, path: Path, *, tight: bool = True) -> None:
    """Write the figure as a PNG; `tight` trims its margins (which draws it twice)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight" if tight else None)
    plt.close(figure)


def image_grid(path: Path, rows: Sequence[np.ndarray], row_titles: Sequence[str], title: str) -> None:
    """One row of uint8 images (N, 28, 28) per entry of `rows`, each titled on its left."""
    columns = max(len(row) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.8, len(rows) * 0.9), squeeze=False)
    for r, (row, label) in enumerate(zip(rows, row_titles, strict=True)):
        for c in range(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c < len(row):
                axis.imshow(row[c], cmap="gray", vmin=0, vmax=255)
            else:
                axis.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    figure.suptitle(title)
    _save(figure, path)


def confusion_grid(path: Path, matrices: Mapping[str, np.ndarray], scores: Mapping[str, float],
                   columns: int = 5) -> None:
    """One confusion matrix (rows: true class, columns: predicted) per model variant, `columns` to a row, so that
    ten variants fit a screen (about 1,650 x 750 pixels) instead of one strip 3,100 pixels wide."""
    rows = -(-len(matrices) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.0 * columns, 3.3 * rows), squeeze=False)
    for axis, (name, matrix) in zip(axes.flat, matrices.items(), strict=False):  # a last row may have blanks
        axis.imshow(matrix, cmap="Blues")
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if count > matrix.max() / 2 else "black"
                axis.text(j, i, str(count), ha="center", va="center", fontsize=6, color=colour)
        axis.set_title(f"{name}\naccuracy {scores[name]:.2%}", fontsize=9)
        axis.set_xlabel("predicted", fontsize=8)
        axis.set_ylabel("true", fontsize=8)
        axis.set_xticks(range(matrix.shape[1]))
        axis.set_yticks(range(matrix.shape[0]))
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(matrices):]:
        axis.axis("off")
    # margins set by hand: trimming them (bbox "tight") or a constrained layout draws the 1,000 counts again
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.12 / rows, top=1 - 0.14 / rows, wspace=0.3,
                           hspace=0.45)
    _save(figure, path, tight=False)


def budget_curve(path: Path, summary: pd.DataFrame) -> None:
    """Accuracy of each method (mean, with a band of one standard deviation) against labels per class, and the
    pretrained model's source-only accuracy as a dashed line."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    x = summary["labels_per_class"]
    methods = (("semi_supervised", "semi-supervised transfer", "tab:green"), ("transfer", "transfer", "tab:blue"),
               ("scratch", "from scratch", "tab:orange"))
    for name, label, colour in methods:
        mean, std = summary[f"{name}_accuracy_mean"], summary[f"{name}_accuracy_std"]
        axis.plot(x, mean, marker="o", color=colour, label=label)
        axis.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2)
    axis.plot(x, summary["source_only_accuracy_mean"], linestyle="--", color="tab:grey",
              label="source-only (no target labels)")
    axis.set_xscale("log")
    axis.set_xticks(x, [f"{b}\n({n})" if b == "all" else str(n) for b, n in zip(summary["budget"], x, strict=True)])
    axis.set_xlabel("labelled target images per class")
    axis.set_ylabel("target test accuracy")
    axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axis.set_title("Label budget: every model trained for the same optimizer steps")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def pareto_front(cost: pd.Series, accuracy: pd.Series) -> list[str]:
    """Names of the points no other point beats on both axes (lower cost, higher accuracy), by rising cost."""
    front, best = [], -np.inf
    for name in cost.sort_values(kind="stable").index:
        if accuracy[name] > best:
            front.append(name)
            best = accuracy[name]
    return front


def _interval(table: pd.DataFrame, column: str) -> np.ndarray | None:
    """Distances below and above each value of `column` to its interval's ends (`<column>_low` / `_high`)."""
    if f"{column}_low" not in table or f"{column}_high" not in table:
        return None
    return np.vstack([table[column] - table[f"{column}_low"], table[f"{column}_high"] - table[column]]).clip(min=0)


def pareto_plot(path: Path, table: pd.DataFrame, axes_spec: Sequence[tuple[str, str, bool]],
                chosen: str | None = None) -> None:
    """Accuracy against each (column, label, log scale) of `axes_spec`: a cost (lower is better) or a column
    ending in a ratio to a baseline (`_vs_...`, higher is better); 95% intervals drawn where the table has them,
    the Pareto front joined by a line, the `chosen` variant ringed. Each variant has its own colour, named once in
    a legend beside the panels: names written next to the points overprinted each other where variants tie."""
    figure, axes = plt.subplots(1, len(axes_spec), figsize=(5.6 * len(axes_spec) + 2.2, 4.6), squeeze=False,
                                gridspec_kw={"wspace": 0.25})
    colours = dict(zip(table.index, plt.get_cmap("tab10" if len(table) <= 10 else "tab20").colors, strict=False))
    for axis, (column, label, log_scale) in zip(axes[0], axes_spec, strict=True):
        higher_is_better = "_vs_" in column
        cost = -table[column] if higher_is_better else table[column]
        front = pareto_front(cost, table["accuracy"])
        axis.plot(table.loc[front, column], table.loc[front, "accuracy"], color="tab:green", alpha=0.6,
                  label="Pareto front (its points edged black)", zorder=1)
        axis.errorbar(table[column], table["accuracy"], yerr=_interval(table, "accuracy"),
                      xerr=_interval(table, column), fmt="none", ecolor="tab:grey", alpha=0.35, capsize=2, zorder=1,
                      label="95% intervals")
        for name in table.index:
            axis.scatter([table.loc[name, column]], [table.loc[name, "accuracy"]], color=colours[name], s=42,
                         edgecolors="black" if name in front else "none", linewidths=1.0, zorder=2,
                         label=name)
        if chosen is not None and chosen in table.index:
            axis.scatter([table.loc[chosen, column]], [table.loc[chosen, "accuracy"]], s=180, facecolors="none",
                         edgecolors="tab:red", linewidths=1.5, zorder=3, label=f"registered: {chosen}")
        if log_scale:
            axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("target test accuracy")
        axis.grid(alpha=0.3)
        axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    # one entry per variant (its colour, whichever panel's front it is on), then the lines and rings
    handles = [matplotlib.lines.Line2D([], [], marker="o", linestyle="", color=colours[name], label=name)
               for name in table.index]
    handles += [h for h in axes[0][0].get_legend_handles_labels()[0] if h.get_label() not in table.index]
    figure.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    figure.subplots_adjust(right=1 - 2.0 / figure.get_figwidth())
    figure.suptitle("Model variants: accuracy against cost and speed (up, and left for size or right for speed, "
                    "is better)")
    _save(figure, path)


def search_rewards(path: Path, table: pd.DataFrame, *, agent: str, budget: str) -> None:
    """The agent's and random search's reward per episode (points) and best so far (lines), with the one-shot
    baselines (uniform shares, global ranking) as horizontal lines."""
    figure, axis = plt.subplots(figsize=(7.2, 4.4))
    x = table["episode"] + 1
    for method, label, colour in (("agent", agent, "tab:blue"), ("random", "random search", "tab:orange")):
        axis.scatter(x, table[f"{method}_reward"], s=6, color=colour, alpha=0.35)
        axis.plot(x, table[f"{method}_best"], color=colour, label=f"{label}, best so far")
    for method, label, colour in (("uniform", "uniform shares", "tab:grey"),
                                  ("global_ranking", "global ranking (|gamma|)", "tab:purple")):
        axis.axhline(table[method].iloc[0], linestyle="--", color=colour, label=label)
    best = max(table["agent_best"].max(), table["random_best"].max(), table["uniform"].max(),
               table["global_ranking"].max())
    # the contest is at the top: keep it readable, with both baselines' lines in view
    low = min(best - 0.3, table["uniform"].iloc[0], table["global_ranking"].iloc[0]) - 0.03
    axis.set_ylim(max(0.0, low), min(1.0, best + 0.03))
    axis.set_xlabel("candidate (episode)")
    axis.set_ylabel("validation accuracy after BatchNorm recalibration")
    axis.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axis.set_title(f"Per-layer pruning search within {budget}, no fine-tuning", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    _save(figure, path)


def drift_timeline(path: Path, table: pd.DataFrame, *, alpha: float) -> None:
    """Per arrived batch: both tests' p-values (log scale, the alpha line, alarms in red) above the model's mean
    confidence, which often falls with the accuracy nobody can see yet."""
    figure, (tests, confidence) = plt.subplots(2, 1, figsize=(7.2, 5.2), sharex=True,
                                               gridspec_kw={"height_ratios": [3, 2]})
    x = np.arange(len(table))
    floor = 1e-4  # a permutation p-value of 0 and KS's tiny ones drawn at the bottom edge
    for column, label, marker in (("ks_p", "KS on softmax (Bonferroni)", "o"), ("mmd_p", "MMD on embeddings", "s")):
        tests.plot(x, table[column].clip(lower=floor), marker=marker, label=label)
    tests.axhline(alpha, color="tab:red", linestyle="--", label=f"alpha {alpha}")
    for position in x[table["alarm"].to_numpy(bool)]:
        tests.axvspan(position - 0.4, position + 0.4, color="tab:red", alpha=0.12)
    tests.set_yscale("log")
    tests.set_ylim(floor / 2, 1.5)
    tests.set_ylabel("p-value")
    tests.set_title("Drift of each arrived batch against the reference (shaded: alarm)")
    tests.legend(fontsize=8, loc="lower left")
    tests.grid(alpha=0.3)
    confidence.plot(x, table["mean_confidence"], marker="o", color="tab:green")
    confidence.set_ylabel("mean confidence")
    confidence.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    confidence.set_xticks(x, table["batch"], rotation=30, ha="right", fontsize=7)
    confidence.grid(alpha=0.3)
    _save(figure, path)


def contact_sheet(path: Path, images: np.ndarray, captions: Sequence[str], title: str, columns: int = 10) -> None:
    """Images (uint8 (N, 28, 28)) in a grid, each with its caption (its id and the model's guess) beneath."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.25, rows * 1.55), squeeze=False,
                                layout="constrained")
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index < len(images):
            axis.imshow(images[index], cmap="gray", vmin=0, vmax=255)
            axis.set_xlabel(captions[index], fontsize=6)
        else:
            axis.axis("off")
    figure.suptitle(title)
    _save(figure, path)
