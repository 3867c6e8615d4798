-- 0014_interaction_peak: the pair_weight setting lets the models read a pair's strongest single
-- event instead of the sum of its events (a grocery log's repeat purchases otherwise dominate
-- the Gram matrix). Rows written before this get their sum; the setting is new, so the model
-- configuration differs and the next refresh is a full one, which recomputes every peak.
alter table interactions add column peak DOUBLE;
update interactions set peak = weight;
