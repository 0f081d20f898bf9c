-- shape: insert_message
-- title: Insert a user message (foreign-key checks included)
-- lesson: Every insert checks its foreign keys (conversation, org, user) through their primary keys
-- lesson: and updates every index on the table: each index you add is paid for here.
-- kind: write
-- params: conversation
-- compare: rowcount
-- tables: messages
-- variant: default
INSERT INTO ai_app.messages (conversation_id, org_id, user_id, role, content, token_count, created_at, metadata)
VALUES (%(conversation_id)s, %(org_id)s, %(user_id)s, 'user',
        'How do I rotate an API key without downtime?', 11, now(), '{"client": "web"}')
