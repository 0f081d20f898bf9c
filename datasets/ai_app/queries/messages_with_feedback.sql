-- shape: messages_with_feedback
-- title: An org's messages that got feedback (JSONB key existence)
-- lesson: Key existence (?) is served by GIN jsonb_ops but not by jsonb_path_ops; the jsonpath form
-- lesson: (@?) is served by both. Feedback is on about 2% of assistant messages: selective enough to index.
-- kind: read
-- params: org
-- compare: rows
-- tables: messages
-- variant: key_exists
SELECT id, created_at, metadata->'feedback' AS feedback
FROM ai_app.messages
WHERE org_id = %(org_id)s AND metadata ? 'feedback'
ORDER BY created_at DESC, id DESC
LIMIT 100
-- variant: jsonpath_exists
SELECT id, created_at, metadata->'feedback' AS feedback
FROM ai_app.messages
WHERE org_id = %(org_id)s AND metadata @? '$.feedback'
ORDER BY created_at DESC, id DESC
LIMIT 100
-- variant: not_null
SELECT id, created_at, metadata->'feedback' AS feedback
FROM ai_app.messages
WHERE org_id = %(org_id)s AND metadata->'feedback' IS NOT NULL
ORDER BY created_at DESC, id DESC
LIMIT 100
