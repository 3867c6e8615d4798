-- rtsql_setting: a setting's current text value (rtsql seeds every default into the table).
create or replace macro rtsql_setting(p_name) as
    (select value from rtsql_settings where name = p_name);
