-- shape: audit_by_actor
-- title: Audit log of one actor over a time range (security review)
-- lesson: Equality column first, range column second: (actor_user_id, occurred_at) serves it;
-- lesson: (occurred_at, actor_user_id) reads the whole range of every actor.
-- kind: read
-- params: actor day_range
-- compare: rows
-- tables: audit_log
-- variant: default
SELECT id, action, target_type, target_id, occurred_at
FROM ai_app.audit_log
WHERE actor_user_id = %(actor_user_id)s
  AND occurred_at >= %(since)s AND occurred_at < %(until)s
ORDER BY occurred_at DESC, id DESC
LIMIT 100
