-- shape: monthly_invoice_totals
-- title: Monthly invoice totals by plan (finance report)
-- lesson: A small join and aggregate; the unique (org_id, period_start) index does not serve a
-- lesson: filter on period_start alone, because period_start is not its leading column.
-- kind: read
-- params: month
-- compare: rows
-- tables: invoices organisations
-- variant: default
SELECT o.plan, count(*) AS invoices, sum(i.amount_usd) AS amount_usd,
       count(*) FILTER (WHERE i.status = 'overdue') AS overdue
FROM ai_app.invoices i
JOIN ai_app.organisations o ON o.id = i.org_id
WHERE i.period_start = %(month_start)s
GROUP BY o.plan
ORDER BY o.plan
