-- rtsql_verb: the past-tense phrase for an event type, used in recommendation reasons.
create or replace macro rtsql_verb(p_event_type) as
    case p_event_type
        when 'view' then 'viewed' when 'click' then 'clicked' when 'search' then 'searched for'
        when 'cart' then 'added to cart' when 'purchase' then 'bought' when 'rating' then 'rated'
        when 'basket' then 'picked'
        else 'interacted with'
    end;
