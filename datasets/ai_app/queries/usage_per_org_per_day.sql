-- shape: usage_per_org_per_day
-- title: Token usage per day for one org (the usage dashboard)
-- lesson: A composite index (org_id, occurred_at) turns a scan of every tenant's events into a range
-- lesson: read of one tenant's; adding INCLUDE (the summed columns) makes it index-only.
-- kind: read
-- params: org day_range
-- compare: rows
-- tables: usage_events
-- variant: default
SELECT date_trunc('day', occurred_at AT TIME ZONE 'UTC') AS day,
       count(*) AS requests,
       sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens,
       sum(cost_usd) AS cost_usd
FROM ai_app.usage_events
WHERE org_id = %(org_id)s
  AND occurred_at >= %(since)s AND occurred_at < %(until)s
GROUP BY 1
ORDER BY 1
