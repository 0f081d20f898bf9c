-- shape: conversation_latest_messages
-- title: A conversation's latest messages (the chat view)
-- lesson: Every chat screen opens with this. Without an index on (conversation_id, created_at) it
-- lesson: scans all messages of all tenants to show twenty rows; with one it reads twenty index entries.
-- kind: read
-- params: conversation
-- compare: rows
-- tables: messages
-- variant: default
SELECT id, role, content, token_count, created_at
FROM ai_app.messages
WHERE conversation_id = %(conversation_id)s
ORDER BY created_at DESC, id DESC
LIMIT 20
