-- rtsql_engaged: whether an event type is a click or better (rtsql.vocabulary.ENGAGED): what
-- impression_outcomes credits to an impression, and what lifts a suppressed repeat.
create or replace macro rtsql_engaged(p_event_type) as p_event_type in ({{engaged}});
