-- rtsql_event_weight: the weight one event adds to its (user, item) interaction: the event
-- type's weight, times the event's value for types that use it, forward-decayed against the
-- landmark p_t0 (epoch seconds) with rate p_rate (0: no decay). The one definition of the
-- formula: the refresh's aggregation, rtsql_user_history() and the HTTP server's pending
-- history all call it.
-- The decay factor never goes below e^-200 (about 1e-87): events older than 200 / rate seconds
-- before the landmark all count that much, instead of underflowing to 0 (their squares, in
-- the norms, stay normal doubles). Above the landmark the refresh keeps the factor below
-- e^100 by starting a full refresh, which moves the landmark (refresh.MAX_DECAY_EXPONENT).
create or replace macro rtsql_event_weight(p_type_weight, p_uses_value, p_value, p_ts, p_rate,
                                           p_t0) as
    p_type_weight * (case when p_uses_value then p_value else 1 end)
        * exp(greatest(p_rate * (epoch(p_ts) - p_t0), -200));
