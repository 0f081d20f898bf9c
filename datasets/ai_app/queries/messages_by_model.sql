-- shape: messages_by_model
-- title: Messages answered by one model (JSONB containment vs ->> equality)
-- lesson: The same filter written two ways. A GIN index serves @> (either operator class); only an
-- lesson: expression index on (metadata->>'model') serves ->> equality. A rare model (cold) is where
-- lesson: an index pays; a model on most rows (hot) is read faster by a sequential scan.
-- kind: read
-- params: model
-- compare: rows
-- tables: messages
-- variant: containment
SELECT id, conversation_id, created_at
FROM ai_app.messages
WHERE metadata @> jsonb_build_object('model', %(model)s::text)
ORDER BY id DESC
LIMIT 50
-- variant: key_equality
SELECT id, conversation_id, created_at
FROM ai_app.messages
WHERE metadata->>'model' = %(model)s
ORDER BY id DESC
LIMIT 50
