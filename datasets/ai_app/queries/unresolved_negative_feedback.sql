-- shape: unresolved_negative_feedback
-- title: The support queue: unresolved thumbs-down answers of an org
-- lesson: Under 0.5% of messages match. A partial index (WHERE the feedback is an unresolved
-- lesson: thumbs-down) is tiny, costs almost nothing on insert, and answers this instantly.
-- kind: read
-- params: org
-- compare: rows
-- tables: messages
-- variant: containment
SELECT id, conversation_id, created_at
FROM ai_app.messages
WHERE org_id = %(org_id)s
  AND metadata @> '{"feedback": {"rating": "down", "resolved": false}}'
ORDER BY created_at DESC, id DESC
LIMIT 50
-- variant: key_equality
SELECT id, conversation_id, created_at
FROM ai_app.messages
WHERE org_id = %(org_id)s
  AND metadata->'feedback'->>'rating' = 'down'
  AND (metadata->'feedback'->>'resolved')::boolean = false
ORDER BY created_at DESC, id DESC
LIMIT 50
