-- shape: messages_feed_pagination
-- title: A deep page of an org's message feed: OFFSET vs keyset
-- lesson: OFFSET 2000 reads and throws away 2000 rows before the 20 it returns, and gets slower with
-- lesson: every page; keyset (WHERE (created_at, id) < the last row seen) starts right at the page.
-- kind: read
-- params: page
-- compare: rows
-- tables: messages
-- variant: offset
SELECT id, conversation_id, role, created_at
FROM ai_app.messages
WHERE org_id = %(org_id)s
ORDER BY created_at DESC, id DESC
OFFSET %(offset)s LIMIT %(page_size)s
-- variant: keyset
SELECT id, conversation_id, role, created_at
FROM ai_app.messages
WHERE org_id = %(org_id)s
  AND (created_at, id) < (%(after_created_at)s::timestamptz, %(after_id)s::bigint)
ORDER BY created_at DESC, id DESC
LIMIT %(page_size)s
