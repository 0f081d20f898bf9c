-- shape: tokens_by_model
-- title: Tokens and cost by model across all tenants (an analytical query)
-- lesson: A scan-and-aggregate over the whole table: no index helps. This is the query to compare
-- lesson: with DuckDB's columnar engine on the same rows.
-- kind: read
-- params: day_range
-- compare: rows
-- tables: usage_events
-- variant: default
SELECT model, count(*) AS requests,
       sum(prompt_tokens + completion_tokens) AS tokens,
       round(sum(cost_usd), 2) AS cost_usd
FROM ai_app.usage_events
WHERE occurred_at >= %(since)s AND occurred_at < %(until)s
GROUP BY model
ORDER BY tokens DESC, model
