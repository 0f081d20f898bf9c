-- shape: increment_org_usage
-- title: Increment an org's monthly token counter (a hot row)
-- lesson: Every request of a big tenant updates the same row: under concurrency they queue on its
-- lesson: row lock. Batch the increments or shard the counter.
-- kind: write
-- params: org
-- defaults: tokens=512
-- compare: rowcount
-- tables: organisations
-- variant: default
UPDATE ai_app.organisations
SET tokens_this_month = tokens_this_month + %(tokens)s
WHERE id = %(org_id)s
