-- shape: hybrid_search_in_org
-- title: Hybrid search in one tenant: keyword and vector results fused (reciprocal rank)
-- lesson: Relational + vector in one statement: each branch uses its own index (GIN full-text,
-- lesson: HNSW or a tenant B-tree) and the fusion is plain SQL.
-- kind: read
-- params: chunk_org query_embedding term
-- compare: rows
-- tables: chunks
-- variant: default
WITH semantic AS (
    SELECT id, row_number() OVER (ORDER BY embedding <=> %(query_embedding)s::vector, id) AS r
    FROM ai_app.chunks
    WHERE org_id = %(org_id)s
    ORDER BY embedding <=> %(query_embedding)s::vector, id
    LIMIT 40
), keyword AS (
    SELECT id, row_number() OVER (ORDER BY ts_rank(to_tsvector('english', content), q) DESC, id) AS r
    FROM ai_app.chunks, websearch_to_tsquery('english', %(term)s) q
    WHERE org_id = %(org_id)s AND to_tsvector('english', content) @@ q
    ORDER BY ts_rank(to_tsvector('english', content), q) DESC, id
    LIMIT 40
)
SELECT id, sum(1.0 / (60 + r)) AS score
FROM (SELECT * FROM semantic UNION ALL SELECT * FROM keyword) hits
GROUP BY id
ORDER BY score DESC, id
LIMIT 10
