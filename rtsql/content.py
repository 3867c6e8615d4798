"""Content-based item similarity from the catalog.

Each item gets a vector of feature groups, each L2-normalized and weighted: its category, its
tags (IDF-weighted), the terms of its title and description (TF-IDF), numeric attributes
(z-scored) and the optional embedding. The cosine top-K of those vectors is stored in
``content_neighbors``; ``embedding_cosine`` records the dense part through the ``rtsql_cosine``
UDF. Items with catalog data and no events are reachable this way (cold start).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from . import measures
from .sqlutil import arrow_column, registered

GROUP_WEIGHTS = {"category": 1.0, "tag": 1.0, "term": 0.5, "numeric": 0.5, "embedding": 1.0}

# correctly rounded sums (fsum) wherever floats are added up: the order DuckDB adds rows in
# varies between runs, and a last-bit difference would reorder tied content neighbours
_FEATURES = """
with cat as (select item_key, 'category' as grp, 'c:' || lower(trim(category)) as f, 1.0 as v
             from item_catalog where category is not null and trim(category) <> ''),
tag as (select item_key, 'tag' as grp, 't:' || lower(trim(t)) as f, 1.0 as v
        from (select item_key, unnest(tags) as t from item_catalog) where trim(t) <> ''),
term as (select item_key, 'term' as grp, 'w:' || w as f, count(*)::DOUBLE as v
         from (select item_key, unnest(regexp_extract_all(
                   lower(coalesce(title, '') || ' ' || coalesce(description, '')),
                   '[[:alnum:]]{2,}')) as w from item_catalog)
         group by all),
idf_input as (select * from cat union all select * from tag union all select * from term),
n as (select count(*)::DOUBLE as n from item_catalog),
df as (select f, count(distinct item_key)::DOUBLE as df from idf_input group by f),
sparse as (select i.item_key, i.grp, i.f,
                  i.v * (ln((n.n + 1) / (df.df + 1)) + 1) as v
           from idf_input i join df using (f), n),
attrs as (select item_key, unnest(json_keys(attributes)) as k, attributes
          from item_catalog where attributes is not null),
num_raw as (select item_key, k, try_cast(json_extract_string(attributes, '$."' || k || '"')
                                          as DOUBLE) as x from attrs),
num_mean as (select item_key, k, x, fsum(x) over (partition by k) / count(x) over (partition by k)
                    as mean from num_raw where x is not null and isfinite(x)),
num as (select item_key, 'numeric' as grp, 'n:' || k as f,
               (x - mean) / nullif(sqrt(fsum((x - mean) * (x - mean)) over (partition by k)
                                        / count(x) over (partition by k)), 0) as v
        from num_mean),
emb as (select item_key, 'embedding' as grp, 'e:' || (pos - 1) as f, x::DOUBLE as v
        from (select item_key, unnest(embedding) as x,
                     generate_subscripts(embedding, 1) as pos
              from item_catalog where embedding is not null)),
all_f as (select * from sparse union all select * from num where v is not null and v <> 0
          union all select * from emb where v <> 0),
normed as (select item_key, grp, f,
                  v / sqrt(fsum(v * v) over (partition by item_key, grp)) as v from all_f)
select item_key, dense_rank() over (order by f) - 1 as feature, v * w.weight as v
from normed join (select unnest($groups) as grp, unnest($weights) as weight) w using (grp)
"""


def feature_matrix(con, embedding_weight: float = 1.0) -> sp.csr_matrix:
    weights = dict(GROUP_WEIGHTS, embedding=embedding_weight)
    cols = con.execute(_FEATURES, {"groups": list(weights), "weights": list(weights.values())}
                       ).fetchnumpy()
    n_items = con.execute("select coalesce(max(item_key), 0) + 1 from items").fetchall()[0][0]
    n_features = int(cols["feature"].max()) + 1 if len(cols["feature"]) else 1
    return sp.csr_matrix((cols["v"].astype(np.float64),
                          (cols["item_key"].astype(np.int64), cols["feature"].astype(np.int64))),
                         shape=(n_items, n_features))


def refresh(con, measure: measures.Measure, progress=None) -> int:
    """Recompute content_neighbors from the catalog with ``measure`` (the refresh passes the
    top-K and the engine's memory and threads); returns the number of items with lists."""
    con.execute("delete from content_neighbors")
    matrix = feature_matrix(con)
    if matrix.nnz == 0:
        return 0
    lists = measures.full(matrix, measure, progress)
    with registered(con, "_rtsql_lists", {
            "item_key": arrow_column(lists.row, pa.int32()),
            "neighbor_key": arrow_column(lists.nb, pa.int32()),
            "score": arrow_column(lists.score, pa.float64()),
            "rank": arrow_column(lists.rank, pa.int32())}):
        con.execute("""
            insert into content_neighbors
            select l.item_key, l.neighbor_key, l.score, l.rank,
                   rtsql_cosine(a.embedding::DOUBLE[], b.embedding::DOUBLE[])
            from _rtsql_lists l
            left join item_catalog a on a.item_key = l.item_key
            left join item_catalog b on b.item_key = l.neighbor_key
            order by l.item_key, l.rank""")
    return len(np.unique(lists.row))
