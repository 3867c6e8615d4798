-- rtsql_reason: the reason text of a recommended row, from the strategy that explains it
-- (item-cf, user-cf, content, trending, popular, new), the event type of the user's history item
-- behind it, and that item's label (title, else id). One definition for recommend() and for
-- the user_recommendations table; rtsql.serving repeats it for the HTTP API (tested equal).
create or replace macro rtsql_reason(p_part, p_event_type, p_label) as
    case p_part
        when 'item-cf' then 'item-cf: because you ' || rtsql_verb(p_event_type) || ' ' || p_label
        when 'content' then 'content: similar to ' || p_label || ', which you '
                            || rtsql_verb(p_event_type)
        when 'user-cf' then 'user-cf: people with similar taste liked it'
        when 'trending' then 'trending: popular right now'
        when 'new' then 'new: recently added'
        else 'popular: most events overall'
    end;
