"""sparse_ease's full build on large synthetic catalogs, next to implicit's cosine fit.

    python benchmarks/bench_sparse_ease.py [--events 10000000] [--items 100000,1000000]
                                           [--neighbors 256] [--threads 2]

For each catalog size: the Foundation generator's synthetic events (rtsql.generate, with
``--items`` items) become the matrix rtsql's refresh builds (rtsql's default event-type weights,
pair_weight max, each user's max_history 500 most recent items), saved once; then, each in a
process of its own, (a) rtsql's sparse_ease lists (rtsql.measures.full, k 50, ``--neighbors``
regressors per item, ``--threads``), (b) implicit's CosineRecommender(K=50).fit on the same
matrix and (c) where installed, SANSA's fit (incomplete Cholesky; weights of the same density
as rtsql's lists): in-process build time and the peak RSS of the whole process (loading the matrix
included, the same for both). Dense EASE is out of reach at these sizes (16 n^2 bytes: 160 GB at
100k items). The machine is shared; the ratio measured in one run is what counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import print_table, run_output

WEIGHTS = {"view": 1.0, "click": 2.0, "search": 1.0, "cart": 4.0, "purchase": 8.0}
MAX_HISTORY = 500

RTSQL = """
import sys, time
import scipy.sparse as sp
from rtsql import measures
x = sp.load_npz(sys.argv[1]).tocsr()
measure = measures.Measure(k=50, kind="sparse_ease", ease_neighbors=int(sys.argv[2]),
                           threads=int(sys.argv[3]))
start = time.perf_counter()
lists = measures.full(x.T.tocsr(), measure)
print(time.perf_counter() - start, len(lists.row))
"""

IMPLICIT = """
import sys, time, warnings
import numpy as np, scipy.sparse as sp
warnings.filterwarnings("ignore")
from implicit.nearest_neighbours import CosineRecommender
x = sp.load_npz(sys.argv[1]).tocsr().astype(np.float32)
start = time.perf_counter()
CosineRecommender(K=50).fit(x, show_progress=False)
print(time.perf_counter() - start, 0)
"""

# SANSA (the `sansa` package: pip install '.[bench-sansa]'), the reference implementation of a
# sparse approximate EASE: its incomplete-Cholesky factorizer (the one its authors recommend
# for large sparse catalogs), at its README's l2 and at a weight density of rtsql's list
# budget (k 50 entries per item)
SANSA = """
import sys, time, logging
import numpy as np, scipy.sparse as sp
logging.disable(logging.WARNING)
from sansa import (SANSA, SANSAConfig, ICFGramianFactorizerConfig,
                   UMRUnitLowerTriangleInverterConfig)
x = sp.load_npz(sys.argv[1]).tocsr()
model = SANSA(SANSAConfig(l2=20.0, weight_matrix_density=50 / x.shape[1],
                          gramian_factorizer_config=ICFGramianFactorizerConfig(),
                          lower_triangle_inverter_config=UMRUnitLowerTriangleInverterConfig()))
start = time.perf_counter()
model.fit(x)
print(time.perf_counter() - start, model.weights[0].nnz + model.weights[1].nnz)
"""


def sansa_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("sansa") is not None


def matrix(events: int, items: int, path: Path) -> tuple[int, int, int]:
    """The capped users x items matrix of the synthetic set; returns its shape and entries."""
    import scipy.sparse as sp

    from rtsql import generate

    table, _ = generate.synthetic_events(generate.SyntheticSpec(events=events, items=items))
    user = table["user_id"].combine_chunks().dictionary_encode().indices.to_numpy()
    item = table["item_id"].combine_chunks().dictionary_encode().indices.to_numpy()
    kind = table["event_type"].combine_chunks().dictionary_encode()
    weight = np.array([WEIGHTS[k] for k in kind.dictionary.to_pylist()])[kind.indices.to_numpy()]
    order = np.arange(len(user))  # events are sorted by time: later rows are newer
    n_items = int(item.max()) + 1
    pair = user.astype(np.int64) * n_items + item
    # per pair: its strongest weight and its latest event
    by_pair = np.lexsort((order, pair))
    pair_sorted = pair[by_pair]
    last = np.r_[pair_sorted[1:] != pair_sorted[:-1], True]
    starts = np.r_[0, np.flatnonzero(last)[:-1] + 1]
    peak = np.maximum.reduceat(weight[by_pair], starts)
    latest = order[by_pair][last]
    pairs = pair_sorted[last]
    u, i = pairs // n_items, pairs % n_items
    # each user's MAX_HISTORY most recent items
    by_user = np.lexsort((-latest, u))
    u, i, peak = u[by_user], i[by_user], peak[by_user]
    first = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    rank = np.arange(len(u)) - np.repeat(first, np.diff(np.r_[first, len(u)]))
    keep = rank < MAX_HISTORY
    x = sp.csr_matrix((peak[keep], (u[keep], i[keep])), shape=(int(u.max()) + 1, n_items))
    sp.save_npz(path, x)
    return x.shape[0], x.shape[1], x.nnz


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--items", default="100000,1000000")
    parser.add_argument("--neighbors", type=int, default=192)  # the ease_neighbors default
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sansa-limit", type=float, default=1800,
                        help="seconds after which the SANSA peer is stopped and reported as "
                             "not finished")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for items in (int(s) for s in args.items.split(",")):
            path = Path(tmp) / f"x_{items}.npz"
            users, n_items, nnz = matrix(args.events, items, path)
            print(f"{args.events} events, {items} items: {users} x {n_items}, {nnz} entries",
                  file=sys.stderr)
            out, rss = run_output([sys.executable, "-c", RTSQL, str(path), str(args.neighbors),
                                   str(args.threads)])
            seconds, entries = out.split()
            peer_out, peer_rss = run_output([sys.executable, "-c", IMPLICIT, str(path)])
            peer_seconds = float(peer_out.split()[0])
            sansa = ("not installed", "", "")
            if sansa_installed():
                sansa_out, sansa_rss = run_output([sys.executable, "-c", SANSA, str(path)],
                                                  limit=args.sansa_limit)
                if sansa_out is None:
                    sansa = (f"over {args.sansa_limit:g}", f"{sansa_rss / 1024:.2f}", "")
                else:
                    sansa_seconds, weights = sansa_out.split()
                    sansa = (f"{float(sansa_seconds):.1f}", f"{sansa_rss / 1024:.2f}",
                             f"{int(weights):,}")
            rows.append((f"{items:,}", f"{nnz:,}", f"{float(seconds):.1f}", f"{rss / 1024:.2f}",
                         f"{int(entries):,}", f"{peer_seconds:.1f}", f"{peer_rss / 1024:.2f}",
                         f"{float(seconds) / peer_seconds:.1f}x", *sansa))
            print(rows[-1], file=sys.stderr)
    print_table(["items", "matrix entries", "sparse_ease s", "peak GiB", "list entries",
                 "implicit cosine s", "peak GiB", "time ratio", "SANSA s", "peak GiB",
                 "SANSA weights"], rows)


if __name__ == "__main__":
    main()
