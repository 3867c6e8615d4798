-- content_similarity: catalog-based neighbours (category, tags, text, numeric, embedding).
create or replace view content_similarity as
select i.item_id, j.item_id as neighbor_id, n.score, n.rank, n.embedding_cosine
from content_neighbors n
join items i on i.item_key = n.item_key
join items j on j.item_key = n.neighbor_key;
