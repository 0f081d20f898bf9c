-- shape: count_messages
-- title: How many messages? Exact count(*) vs the planner's estimate
-- lesson: count(*) reads the whole table (or a whole index); pg_class.reltuples is free and, right
-- lesson: after ANALYZE, close. A dashboard badge rarely needs the exact figure.
-- kind: read
-- compare: estimate
-- tables: messages
-- variant: exact
SELECT count(*) FROM ai_app.messages
-- variant: estimate
SELECT reltuples::bigint FROM pg_class WHERE oid = 'ai_app.messages'::regclass
