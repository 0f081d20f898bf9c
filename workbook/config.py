"""Configuration from the environment: the one module that reads ``WORKBOOK_*`` variables.

Each function reads its variable when called (never at import, so a test or a notebook may set it
later) and returns a typed value, or raises a one-line :class:`~workbook.errors.WorkbookError`
that names the variable, shows the bad value and says what it should look like. An unset or
empty variable means "not given".

=========================  ========================================================  =================
variable                   meaning                                                   function
=========================  ========================================================  =================
``WORKBOOK_HOME``          the workbook home (cluster, results)                      :func:`home`
``WORKBOOK_DSN``           your own primary instead of the local cluster             :func:`dsn`
``WORKBOOK_REPLICA_DSNS``  its read replicas, space-separated                        :func:`replica_dsns`
``WORKBOOK_ALLOW_WRITES``  ``1``: writes/DDL allowed on ``WORKBOOK_DSN``             :func:`allow_writes`
``WORKBOOK_ALLOW_PLAINTEXT`` ``1``: no TLS toward a non-loopback ``WORKBOOK_DSN`` is ok :func:`allow_plaintext`
``WORKBOOK_SCALE``         the dataset's default scale factor (default 0.05)         :func:`default_scale`
``WORKBOOK_PG_BIN``        another PostgreSQL bin directory than the embedded one    :func:`pg_bin`
``WORKBOOK_PSQL``          the psql ``workbook psql`` runs                           :func:`psql`
``WORKBOOK_PORT``          the primary's port when a cluster is created              :func:`port`
``WORKBOOK_PG_USER``       the server's OS user when running as root                 :func:`pg_user`
``WORKBOOK_DATASETS``      a ``datasets/`` folder other than the installed one       :func:`datasets_dir`
=========================  ========================================================  =================
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import WorkbookError

#: the dataset's scale when none is given: ``workbook load``, ``workbook report`` and the notebooks
#: (SF 0.05 ≈ 50k messages, ~32 MB: seconds to load; CI and Binder run at this size)
DEFAULT_SCALE = 0.05
#: the server's OS user when the workbook runs as root
DEFAULT_PG_USER = "workbook_pg"

#: every variable this module reads (checked for valid UTF-8 by the CLI)
VARIABLES = (
    "WORKBOOK_HOME", "WORKBOOK_DSN", "WORKBOOK_REPLICA_DSNS", "WORKBOOK_ALLOW_WRITES", "WORKBOOK_ALLOW_PLAINTEXT", "WORKBOOK_SCALE",
    "WORKBOOK_PG_BIN", "WORKBOOK_PSQL", "WORKBOOK_PORT", "WORKBOOK_PG_USER", "WORKBOOK_DATASETS",
)  # fmt: skip

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _raw(name: str) -> str | None:
    """The variable's value, or None when it is unset or blank; refused if it is not valid UTF-8."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    if any("\udc80" <= c <= "\udcff" for c in value):
        raise WorkbookError(f"${name} is not valid UTF-8; check its encoding")
    return value


def check_encoding() -> None:
    """Refuse any of :data:`VARIABLES` that is not valid UTF-8 (one line naming it)."""
    for name in VARIABLES:
        _raw(name)


def home() -> Path | None:
    """``WORKBOOK_HOME`` as an absolute path; None when unset."""
    raw = _raw("WORKBOOK_HOME")
    return None if raw is None else Path(raw).expanduser().absolute()


def dsn() -> str | None:
    """``WORKBOOK_DSN``: your own primary's connection string; None when unset."""
    return _raw("WORKBOOK_DSN")


def replica_dsns() -> list[str]:
    """``WORKBOOK_REPLICA_DSNS``: its replicas' connection strings (space-separated); [] when unset."""
    raw = _raw("WORKBOOK_REPLICA_DSNS")
    return [] if raw is None else raw.split()


def _flag(name: str) -> bool:
    """A yes/no variable: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``; unset: False."""
    raw = _raw(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise WorkbookError(f"{name} must be 1 or 0 (true/false, yes/no), not {raw!r}")


def allow_writes() -> bool:
    """``WORKBOOK_ALLOW_WRITES``: ``1``/``true``/``yes``/``on`` allow writes on ``WORKBOOK_DSN``; unset: False."""
    return _flag("WORKBOOK_ALLOW_WRITES")


def allow_plaintext() -> bool:
    """``WORKBOOK_ALLOW_PLAINTEXT``: ``1`` allows connections without TLS to a non-loopback host; unset: False."""
    return _flag("WORKBOOK_ALLOW_PLAINTEXT")


def default_scale() -> float:
    """``WORKBOOK_SCALE``, else :data:`DEFAULT_SCALE`: the scale a dataset is loaded at when none is given."""
    raw = _raw("WORKBOOK_SCALE")
    if raw is None:
        return DEFAULT_SCALE
    try:
        scale = float(raw)
    except ValueError:
        scale = math.nan
    if not math.isfinite(scale) or scale <= 0:
        raise WorkbookError(f"WORKBOOK_SCALE must be a number > 0 like {DEFAULT_SCALE}, got {raw!r}")
    return scale


def pg_bin() -> Path | None:
    """``WORKBOOK_PG_BIN``: a PostgreSQL bin directory to use instead of the embedded one; None when unset."""
    raw = _raw("WORKBOOK_PG_BIN")
    return None if raw is None else Path(raw).expanduser()


def psql() -> str | None:
    """``WORKBOOK_PSQL``: the psql executable ``workbook psql`` runs; None: the one next to the server."""
    return _raw("WORKBOOK_PSQL")


def port() -> int | None:
    """``WORKBOOK_PORT``: the primary's TCP port when a cluster is created (1024..65535); None when unset."""
    raw = _raw("WORKBOOK_PORT")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise WorkbookError(f"WORKBOOK_PORT must be a port number, not {raw!r}") from None
    if not 1024 <= value <= 65535:
        raise WorkbookError(f"WORKBOOK_PORT must be a TCP port from 1024 to 65535, not {value!r}")
    return value


def pg_user() -> str:
    """``WORKBOOK_PG_USER``, else ``workbook_pg``: the server's OS user when running as root."""
    return (_raw("WORKBOOK_PG_USER") or DEFAULT_PG_USER).strip()


def datasets_dir() -> Path | None:
    """``WORKBOOK_DATASETS``: a ``datasets/`` folder to read instead of the installed one; None when unset."""
    raw = _raw("WORKBOOK_DATASETS")
    return None if raw is None else Path(raw).expanduser()
