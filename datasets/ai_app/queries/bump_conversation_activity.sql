-- shape: bump_conversation_activity
-- title: Bump a conversation's last_activity_at after a new message
-- lesson: An UPDATE of an indexed column cannot be HOT: each index on last_activity_at turns this
-- lesson: into new index entries and more WAL. Index what you read, not everything you write.
-- kind: write
-- params: conversation
-- compare: rowcount
-- tables: conversations
-- variant: default
UPDATE ai_app.conversations
SET last_activity_at = greatest(last_activity_at, now()), message_count = message_count + 1
WHERE id = %(conversation_id)s
