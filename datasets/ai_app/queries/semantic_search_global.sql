-- shape: semantic_search_global
-- title: Semantic top-10 over all chunks (pgvector, no filter)
-- lesson: The textbook ANN query: exact search computes a distance per row; HNSW answers in about a
-- lesson: millisecond with high recall on clustered data. Measure recall, not only speed.
-- kind: read
-- params: query_embedding
-- compare: rows
-- tables: chunks
-- variant: default
SELECT id, document_id, org_id, embedding <=> %(query_embedding)s::vector AS distance
FROM ai_app.chunks
ORDER BY embedding <=> %(query_embedding)s::vector, id
LIMIT 10
