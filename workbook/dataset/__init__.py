"""The sample AI-app dataset: schema, deterministic generator, loader, checksum, query shapes."""

from .checksum import Checksum, checksum, duckdb_checksum
from .duck import to_duckdb
from .generator import GENERATOR_VERSION, Generator
from .indexes import IndexSpec, indexes_for, load_indexes
from .loader import SCHEMA, DatasetInfo, dataset_info, load, table_sizes
from .pristine import ResetResult, is_pristine, mark_written, protect, reset
from .shapes import QueryShape, ShapeVariant, load_shapes, parse_shape, shape

__all__ = [
    "GENERATOR_VERSION", "SCHEMA", "Checksum", "DatasetInfo", "Generator", "IndexSpec", "QueryShape", "ResetResult",
    "ShapeVariant", "checksum", "dataset_info", "duckdb_checksum", "indexes_for", "is_pristine", "load",
    "load_indexes", "load_shapes", "mark_written", "parse_shape", "protect", "reset", "shape", "table_sizes",
    "to_duckdb",
]  # fmt: skip
