"""Protocol-1 trials of setting overrides, for the nested search of the defaults.

    python benchmarks/bench_trials.py [--dataset=ml|tafeng] [--half=0|1] [--val] \
        'name:setting=value,...' ...

Each argument is one trial: a name, then the settings it overrides (``strategies=a+b`` scores
several strategies); after ``@``, serving settings (blend weights, recency) scored on the same
refresh, one set per ``;`` (``'ease:similarity=ease@weight_user_cf=0;weight_user_cf=0.3'``). ``--val`` scores on a validation split of the *train* events only (the
test events of ../shared/EVAL.md protocol 1 are never read): what a tuning run may look at.
``--half=0`` / ``--half=1`` keeps one half of the users (benchmarks/datasets.py), two
independent datasets. Prints NDCG@10 and the other protocol-1 figures per trial. The datasets
(MovieLens ml-latest-small, GroupLens, non-commercial research use; the Ta Feng grocery log) are
read from ../shared/datasets/.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtsql import evaluate  # noqa: E402

from datasets import DATASETS  # noqa: E402


def main(argv: list[str]) -> None:
    dataset = DATASETS["ml"]
    if argv and argv[0].startswith("--dataset="):
        dataset = DATASETS[argv.pop(0).split("=")[1]]
    dataset.require()
    half = None
    if argv and argv[0].startswith("--half="):
        half = int(argv.pop(0).split("=")[1])
    validation = bool(argv) and argv[0] == "--val"
    if validation:
        argv.pop(0)
    events = dataset.events(half)
    if validation:  # the train events of protocol 1; holdout() splits them again
        events = dataset.split(events=events)[0]
    con = dataset.build_database(Path(tempfile.mkdtemp()) / "trials.duckdb", events)
    def pairs(text: str) -> dict:
        return dict(kv.split("=", 1) for kv in text.split(",") if kv)

    for spec in argv:
        name, _, rest = spec.partition(":")
        rest, _, blends = rest.partition("@")
        overrides = pairs(rest)
        strategies = overrides.pop("strategies", "hybrid").split("+")
        serving = [pairs(b) for b in blends.split(";")] if blends else None
        for r in evaluate.holdout(con, overrides=overrides, strategies=strategies,
                                  serving=serving):
            m = r.metrics
            label = name + ("@" + ",".join(f"{a}={b}" for a, b in r.serving.items())
                            if r.serving else "")
            print(f"{label:60s} {r.strategy:8s} P@10 {m.precision:.4f} R@10 {m.recall:.4f} "
                  f"NDCG@10 {m.ndcg:.4f} coverage {m.coverage:.4f} fit {r.refresh_seconds:.1f}s",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
