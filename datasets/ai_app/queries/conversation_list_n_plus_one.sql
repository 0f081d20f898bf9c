-- shape: conversation_list_n_plus_one
-- title: Conversation list, N+1 queries vs one JOIN
-- lesson: The ORM default: one query for the list, then one per row for its last message. Each
-- lesson: round trip is cheap; thirty of them are not. The JOIN (LATERAL) does it in one statement.
-- kind: read
-- params: user
-- compare: rows
-- tables: conversations messages
-- variant: n_plus_one
SELECT id, title FROM ai_app.conversations
WHERE user_id = %(user_id)s
ORDER BY last_activity_at DESC, id DESC
LIMIT 30
-- for each row:
SELECT %(id)s::bigint AS id, %(title)s::text AS title, m.role, m.created_at
FROM ai_app.messages m
WHERE m.conversation_id = %(id)s
ORDER BY m.created_at DESC, m.id DESC
LIMIT 1
-- variant: one_join
SELECT c.id, c.title, m.role, m.created_at
FROM (SELECT id, title, last_activity_at FROM ai_app.conversations
      WHERE user_id = %(user_id)s
      ORDER BY last_activity_at DESC, id DESC LIMIT 30) c
CROSS JOIN LATERAL (
    SELECT role, created_at FROM ai_app.messages
    WHERE conversation_id = c.id
    ORDER BY created_at DESC, id DESC LIMIT 1
) m
ORDER BY c.last_activity_at DESC, c.id DESC
