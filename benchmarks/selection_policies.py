"""What each rule for adapt's output would have scored on the test queries, from interpolate_adapted.py results.

Why: the candidates of one finished run (start, chosen checkpoint, last, their averages with the start)
are all scored there; a rule is a choice among them that sees only the dev scores, so each rule's test
gain per collection, and the mean across collections, follows without retraining anything.

Several runs of one collection (other --seed draws) are averaged first, so each collection weighs
the same in the mean, and the per-run gains show the spread between draws.

    python benchmarks/selection_policies.py benchmarks/results/interpolate_*_crops*.json [--bar 0.95]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def chosen(run: dict, rule: str, bar: float) -> str:
    """The candidate a rule picks, from dev-side facts only (the run's own bar decision and dev scores).
    Like adapt's export, an average or the last step replaces the start only if it passes the bar itself."""
    candidates = run["candidates"]

    def passes(name: str, bare: bool = False) -> bool:
        """A higher dev mean than the start's, with the bar's confidence unless `bare`."""
        dev = candidates[name]["dev"]
        return dev["nDCG@10"] > candidates["start"]["dev"]["nDCG@10"] and (bare or dev["confidence"] >= bar)

    return RULES[rule](run, passes)


def _chosen_averaged(run: dict, passes) -> str:
    average = "best-lerp0.5" if "best-lerp0.5" in run["candidates"] else "lerp0.5"  # lerp0.5 when best is last
    return "start" if run["baseline_kept"] or not passes(average) else average


LARGE_DEV = 100  # dev queries from which a higher dev mean alone is trusted, in the size-dependent rule

RULES = {
    "chosen checkpoint (--export-from best --fine-tuned-weight 1; the default before §13.12)": lambda run, passes: "start" if run["baseline_kept"] else "best",
    "chosen checkpoint averaged with the start (--export-from best --fine-tuned-weight 0.5)": _chosen_averaged,
    "last averaged with the start (w=0.5), always": lambda run, passes: "lerp0.5",
    "last step, always (twice the movement of the average; §13.13)": lambda run, passes: "last",
    "last averaged with the start, under the bar (adapt's default since §13.12)":
        lambda run, passes: "lerp0.5" if passes("lerp0.5") else "start",
    f"the same, with no bar where the dev set has >= {LARGE_DEV} queries (pre-registered in §13.13)":
        lambda run, passes: "lerp0.5" if passes("lerp0.5", bare=run["dev_queries"] >= LARGE_DEV) else "start",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--bar", type=float, default=0.95, help="adapt's --min-dev-confidence")
    args = parser.parse_args()
    by_collection: dict[str, list[dict]] = {}
    for path in args.results:
        run = json.loads(path.read_text())
        by_collection.setdefault(run["collection"], []).append(run)
    names = list(by_collection)
    print("| rule | " + " | ".join(f"{n} ({len(by_collection[n])})" for n in names) + " | mean |")
    print("|---" * (len(names) + 2) + "|")
    for rule in RULES:
        cells, means = [], []
        for name in names:
            gains = [gain(run, chosen(run, rule, args.bar)) for run in by_collection[name]]
            means.append(sum(gains) / len(gains))
            cells.append(f"{means[-1]:+.2f}" + (f" ({', '.join(f'{g:+.2f}' for g in gains)})" if len(gains) > 1 else ""))
        print(f"| {rule} | {' | '.join(cells)} | {sum(means) / len(means):+.2f} |")


def gain(run: dict, pick: str) -> float:
    """Test nDCG@10 points of the picked candidate over the start."""
    return 100 * (run["candidates"][pick]["test"]["nDCG@10"] - run["candidates"]["start"]["test"]["nDCG@10"])


if __name__ == "__main__":
    main()
