"""Errors the workbook raises on purpose.

Every message is one line that says what went wrong and what to do about it. The CLI prints
``error: <message>`` and exits with status 2; a notebook shows the same line. Messages never
carry a password: DSNs in them are redacted (see :func:`workbook.cluster.target.redact_dsn`).
"""

from __future__ import annotations


class WorkbookError(Exception):
    """Base of every error the workbook raises deliberately (as opposed to bugs)."""


class BinariesNotFound(WorkbookError):
    """The PostgreSQL executables the cluster needs are missing."""


class ClusterError(WorkbookError):
    """The local cluster could not do what was asked."""


class PortInUse(ClusterError):
    """A node's TCP port is taken by another process."""


class UnknownNode(ClusterError):
    """A node name that the cluster does not have."""


class TargetError(WorkbookError):
    """A Target (primary + replicas) could not be used as asked."""


class ConnectionFailed(TargetError):
    """A server could not be reached or refused the credentials."""


class ReadOnlyTarget(TargetError):
    """A write or DDL was attempted against a target that does not allow writes."""
