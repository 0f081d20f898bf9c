-- shape: api_key_lookup
-- title: Authenticate a request by API key prefix
-- lesson: The one hot path that is already fast: the UNIQUE constraint on key_prefix is an index.
-- lesson: Constraints are indexes too; count them before adding more.
-- kind: read
-- params: api_key
-- compare: rows
-- tables: api_keys
-- variant: default
SELECT id, org_id, key_hash, revoked_at
FROM ai_app.api_keys
WHERE key_prefix = %(key_prefix)s
