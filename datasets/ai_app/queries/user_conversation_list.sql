-- shape: user_conversation_list
-- title: A user's conversation list with each one's last message
-- lesson: The sidebar of every chat app. LATERAL fetches one last message per conversation by index;
-- lesson: DISTINCT ON sorts all of the user's messages first; the window function numbers them all.
-- kind: read
-- params: user
-- compare: rows
-- tables: conversations messages
-- variant: lateral
SELECT c.id, c.title, c.last_activity_at, m.role, left(m.content, 80) AS preview
FROM ai_app.conversations c
CROSS JOIN LATERAL (
    SELECT role, content FROM ai_app.messages
    WHERE conversation_id = c.id
    ORDER BY created_at DESC, id DESC
    LIMIT 1
) m
WHERE c.user_id = %(user_id)s
ORDER BY c.last_activity_at DESC, c.id DESC
LIMIT 30
-- variant: distinct_on
SELECT id, title, last_activity_at, role, preview
FROM (
    SELECT DISTINCT ON (c.id) c.id, c.title, c.last_activity_at, m.role, left(m.content, 80) AS preview
    FROM ai_app.conversations c
    JOIN ai_app.messages m ON m.conversation_id = c.id
    WHERE c.user_id = %(user_id)s
    ORDER BY c.id, m.created_at DESC, m.id DESC
) last
ORDER BY last_activity_at DESC, id DESC
LIMIT 30
-- variant: window
SELECT id, title, last_activity_at, role, preview
FROM (
    SELECT c.id, c.title, c.last_activity_at, m.role, left(m.content, 80) AS preview,
           row_number() OVER (PARTITION BY c.id ORDER BY m.created_at DESC, m.id DESC) AS n
    FROM ai_app.conversations c
    JOIN ai_app.messages m ON m.conversation_id = c.id
    WHERE c.user_id = %(user_id)s
) ranked
WHERE n = 1
ORDER BY last_activity_at DESC, id DESC
LIMIT 30
