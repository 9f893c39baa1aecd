"""Which variant ships: the best on a declared objective of those that lose no more than a margin of accuracy
against the fp32 model, where "lose no more" is a non-inferiority test on the same test images and "best" needs
a timing ratio whose 95% interval excludes a tie. Among variants the timing cannot tell apart, the most accurate
wins, so noise in one measurement never decides."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from groundwork.evaluation.statistics import PairedTest, Ratio
from groundwork.params.compression import SelectionParams

BASELINE = "fp32_onnx"  # the fp32 weights in the runtime that serves: every objective ratio is against it
OBJECTIVE_WORDS = {"throughput": "throughput", "latency": "speed at batch 1", "size": "smallness of the file"}

Gain = Callable[[str, str], Ratio]  # gain(a, b): how many times better a is than b on the objective


@dataclass(frozen=True)
class Selection:
    """The chosen variant, the rule in words, and for every variant why it was chosen or why it lost."""

    chosen: str
    rule: str
    standings: dict[str, str]


def rule_text(rule: SelectionParams) -> str:
    """The selection rule in one sentence."""
    if rule.variant is not None:
        return f"named outright (evaluate.selection.variant: {rule.variant})"
    return (f"best {OBJECTIVE_WORDS[rule.objective]} among variants whose accuracy loss against fp32 stays within "
            f"{rule.max_loss_points:g} points (one-sided 95% upper bound, paired on the test images); a timing "
            f"counts as better only when its 95% interval excludes a tie, and among ties the most accurate wins")


def _ratio_text(value: Ratio) -> str:
    return f"{value.value:.2f}x [{value.low:.2f}, {value.high:.2f}]"


def select(candidates: Sequence[str], tests: Mapping[str, PairedTest], accuracy: Mapping[str, float], *,
           rule: SelectionParams, gain: Gain) -> Selection:
    """Apply `rule` to `candidates` (they include BASELINE), given each one's paired test against fp32 and its
    accuracy on the same images."""
    words = OBJECTIVE_WORDS[rule.objective]
    if rule.variant is not None:
        return Selection(rule.variant, rule_text(rule), {
            name: "chosen: named outright" if name == rule.variant else "not considered: a variant is named outright"
            for name in candidates})
    standings: dict[str, str] = {}
    eligible = []
    for name in candidates:
        test = tests[name]
        if test.non_inferior(rule.max_loss_points):
            eligible.append(name)
        else:
            standings[name] = (f"may lose up to {test.loss_upper_points:.2f} points against fp32 (one-sided 95% "
                               f"bound; {test.losses} images lost, {test.wins} won), beyond the margin of "
                               f"{rule.max_loss_points:g}")
    if not eligible:  # only possible when fp32_onnx itself disagrees with fp32: registered all the same
        standings[BASELINE] = "chosen: no variant passed the margin, so the fp32 weights themselves ship"
        return Selection(BASELINE, rule_text(rule), standings)
    leader = max(eligible, key=lambda name: gain(name, BASELINE).value)
    tied = [name for name in eligible if name == leader or not (gain(leader, name).excludes_tie)]
    chosen = max(tied, key=lambda name: (accuracy[name], gain(name, BASELINE).value))
    for name in eligible:
        if name == chosen:
            standings[name] = (f"chosen: {words} {_ratio_text(gain(name, BASELINE))} of {BASELINE}'s, "
                               f"loss against fp32 at most {tests[name].loss_upper_points:.2f} points")
        elif name in tied:
            standings[name] = (f"tied with {chosen} on {words} ({_ratio_text(gain(name, chosen))} of its) and not "
                               f"more accurate ({accuracy[name]:.2%} against {accuracy[chosen]:.2%})")
        else:
            standings[name] = f"lower {words}: {_ratio_text(gain(name, leader))} of {leader}'s"
    return Selection(chosen, rule_text(rule), standings)


def dominated_by(chosen: str, candidates: Sequence[str], against_chosen: Mapping[str, PairedTest], *,
                 gain: Gain) -> list[str]:
    """The variants both significantly more accurate than `chosen` (paired on the same images) and better on the
    objective by a ratio whose interval excludes a tie: what a good choice never leaves behind."""
    return [name for name in candidates if name != chosen
            and against_chosen[name].significant and against_chosen[name].wins > against_chosen[name].losses
            and gain(name, chosen).low > 1]
