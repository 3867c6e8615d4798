-- recommend_for_items: top-k items for an anonymous session or basket given as item ids.
-- SELECT * FROM recommend_for_items(['sku-1', 'sku-7'], 5)
create or replace macro recommend_for_items(item_ids, k := {{default_k}}, exclude := NULL, category := NULL,
                                            strategy := {{default_strategy}}, variant := NULL) as table
select * from rtsql_recommend_core(
    NULL::INTEGER,
    (select list(struct_pack(item_key := item_key, weight := 1.0::DOUBLE,
                             event_type := 'basket', ts := TIMESTAMP '2000-01-01'))
     from items where list_contains(item_ids, item_id)),
    k, exclude, category, strategy, variant);
