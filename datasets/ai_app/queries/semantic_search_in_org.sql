-- shape: semantic_search_in_org
-- title: Semantic top-10 within one tenant's documents (pgvector, filtered)
-- lesson: Exact search sorts every candidate by distance. The tenant filter first (a B-tree on org_id)
-- lesson: shrinks the candidates; an HNSW index instead searches the whole graph and filters after,
-- lesson: which can return fewer than 10 rows for a small tenant unless iterative scans are on.
-- kind: read
-- params: chunk_org query_embedding
-- compare: rows
-- tables: chunks
-- variant: where_filter
SELECT id, document_id, embedding <=> %(query_embedding)s::vector AS distance
FROM ai_app.chunks
WHERE org_id = %(org_id)s
ORDER BY embedding <=> %(query_embedding)s::vector, id
LIMIT 10
-- variant: prefilter_cte
WITH candidates AS MATERIALIZED (
    SELECT id, document_id, embedding FROM ai_app.chunks WHERE org_id = %(org_id)s
)
SELECT id, document_id, embedding <=> %(query_embedding)s::vector AS distance
FROM candidates
ORDER BY embedding <=> %(query_embedding)s::vector, id
LIMIT 10
