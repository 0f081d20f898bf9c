-- shape: messages_fulltext
-- title: Full-text search in an org's messages
-- lesson: Without a GIN index on to_tsvector('english', content) every search parses every message
-- lesson: of the table. The index must be on exactly the expression the query uses.
-- kind: read
-- params: org term
-- compare: rows
-- tables: messages
-- variant: default
SELECT id, conversation_id, created_at
FROM ai_app.messages
WHERE org_id = %(org_id)s
  AND to_tsvector('english', content) @@ websearch_to_tsquery('english', %(term)s)
ORDER BY created_at DESC, id DESC
LIMIT 50
