-- shape: recent_messages_star_vs_narrow
-- title: SELECT * vs the columns the screen needs
-- lesson: SELECT * drags content and metadata (kilobytes a row, often TOASTed) over the wire and
-- lesson: rules out an index-only scan; naming the columns lets a covering index answer alone.
-- kind: read
-- params: conversation
-- compare: ids
-- tables: messages
-- variant: star
SELECT *
FROM ai_app.messages
WHERE conversation_id = %(conversation_id)s
ORDER BY created_at, id
-- variant: narrow
SELECT id, role, token_count, created_at
FROM ai_app.messages
WHERE conversation_id = %(conversation_id)s
ORDER BY created_at, id
