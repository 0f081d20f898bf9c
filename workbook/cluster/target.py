"""A Target: how to reach a primary and its read replicas, and whether writes are allowed.

Everything above the cluster layer (dataset loading, experiments, reports) talks only to a
Target, so the local embedded cluster and a user's own (e.g. managed) cluster are used the same
way. External targets are read-only unless the user says otherwise: their connections run with
``default_transaction_read_only=on`` and :meth:`Target.require_writes` refuses up front.

Passwords never leave this module in clear: ``repr``, ``str`` and error messages show DSNs
through :func:`redact_dsn`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionFailed, ReadOnlyTarget, TargetError

if TYPE_CHECKING:  # psycopg is imported lazily: the CLI starts faster without it
    import psycopg

    from ._probe import NodeStatus

REDACTED = "********"


def dsn_params(dsn: str) -> dict[str, str]:
    """Parse a key=value or URI DSN; raise a TargetError (redacted) when it is malformed."""
    from psycopg import conninfo

    try:
        return conninfo.conninfo_to_dict(dsn)  # type: ignore[return-value]
    except Exception as exc:  # psycopg.ProgrammingError; its text may echo the DSN
        raise TargetError(
            f"not a valid PostgreSQL DSN ({redact_text(str(exc).strip(), dsn)}); use "
            "'postgresql://user:password@host:5432/dbname' or 'host=... dbname=...'"
        ) from None


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced, in key=value form; never raises."""
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable DSN>"
    if params.get("password"):
        params["password"] = REDACTED
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def _password_of(dsn: str) -> str | None:
    from psycopg import conninfo

    try:
        return conninfo.conninfo_to_dict(dsn).get("password")  # type: ignore[return-value]
    except Exception:
        return None


def redact_text(text: str, *dsns: str) -> str:
    """``text`` with each DSN, and each DSN's password (plain or URL-encoded), replaced."""
    for dsn in dsns:
        pw = _password_of(dsn)
        if pw:
            from urllib.parse import quote

            text = text.replace(pw, REDACTED).replace(quote(pw, safe=""), REDACTED)
        text = text.replace(dsn, redact_dsn(dsn))
    return text


@dataclass(frozen=True)
class Endpoint:
    """One server of a target: a name (``primary``, ``replica1`` ...) and its DSN."""

    name: str
    dsn: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {redact_dsn(self.dsn)!r})"


@dataclass(frozen=True)
class Target:
    """A primary DSN, replica DSNs, and whether writes/DDL are allowed."""

    primary: Endpoint
    replicas: tuple[Endpoint, ...] = ()
    allow_writes: bool = False
    kind: str = "external"  # "local" for the embedded cluster

    @classmethod
    def from_dsn(
        cls,
        primary: str,
        replicas: list[str] | tuple[str, ...] = (),
        *,
        allow_writes: bool = False,
    ) -> Target:
        """A user's own cluster. Read-only unless ``allow_writes=True``."""
        if not primary or not primary.strip():
            raise TargetError("empty primary DSN; pass --dsn 'postgresql://user@host/db' or set WORKBOOK_DSN")
        for d in (primary, *replicas):
            dsn_params(d)  # validate early, with a redacted message
        return cls(
            primary=Endpoint("primary", primary),
            replicas=tuple(Endpoint(f"replica{i}", d) for i, d in enumerate(replicas, 1)),
            allow_writes=allow_writes,
            kind="external",
        )

    # ---- naming ------------------------------------------------------------------------
    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.primary, *self.replicas)

    def endpoint(self, name: str) -> Endpoint:
        if name == "primary":
            return self.primary
        for e in self.endpoints:
            if e.name == name:
                return e
        known = ", ".join(e.name for e in self.endpoints)
        raise TargetError(f"no node {name!r} in this target; known nodes: {known}")

    def __repr__(self) -> str:
        reps = ", ".join(redact_dsn(r.dsn) for r in self.replicas)
        return (
            f"Target(kind={self.kind!r}, primary={redact_dsn(self.primary.dsn)!r}, "
            f"replicas=[{reps}], allow_writes={self.allow_writes})"
        )

    __str__ = __repr__

    # ---- safety ------------------------------------------------------------------------
    def require_writes(self, what: str) -> None:
        """Refuse ``what`` (e.g. "loading the dataset") unless this target allows writes."""
        if not self.allow_writes:
            raise ReadOnlyTarget(
                f"{what} needs writes, but target {redact_dsn(self.primary.dsn)!r} is read-only; "
                "pass --allow-writes (Target.from_dsn(..., allow_writes=True)) if this is a scratch database"
            )

    # ---- connections -------------------------------------------------------------------
    def connect(self, node: str = "primary", *, autocommit: bool = True, **kwargs: Any) -> psycopg.Connection[Any]:
        """Open a psycopg connection to ``node``; read-only targets get read-only sessions."""
        import psycopg

        ep = self.endpoint(node)
        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("application_name", "workbook")
        if not self.allow_writes:
            opts = kwargs.get("options", "")
            kwargs["options"] = (opts + " -c default_transaction_read_only=on").strip()
        try:
            return psycopg.connect(ep.dsn, autocommit=autocommit, **kwargs)
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(_explain_connect_error(ep, exc)) from None

    def status(self) -> list[NodeStatus]:
        """Each server's role (as the server itself reports it), state and replay lag.

        ``pid`` is None (the server's process is not ours to see) and ``port`` comes from the DSN.
        An unreachable primary raises :class:`ConnectionFailed` (the DSN is wrong or the server is
        down: nothing else can work); an unreachable replica shows ``state="unreachable"``.
        """
        from ._probe import NodeStatus, probe, replica_lag, replica_state

        found: list[tuple[Endpoint, Any]] = []
        for ep in self.endpoints:
            try:
                with self.connect(ep.name) as conn:
                    found.append((ep, probe(conn)))
            except ConnectionFailed:
                if ep is self.primary:
                    raise
                found.append((ep, None))
        primary_lsn = next((p.current_lsn for ep, p in found if ep is self.primary and p is not None), None)
        out = []
        for ep, p in found:
            port = int(dsn_params(ep.dsn).get("port") or 5432)
            if p is None:
                role = "primary" if ep is self.primary else "replica"
                out.append(NodeStatus(ep.name, role, None, port, "unreachable", None, None))
            elif not p.in_recovery:
                out.append(NodeStatus(ep.name, "primary", None, port, "running", None, None))
            else:
                lag_b, lag_s = replica_lag(p, primary_lsn)
                out.append(NodeStatus(ep.name, "replica", None, port, replica_state(p), lag_b, lag_s))
        return out

    def iter_connections(self) -> Iterator[tuple[Endpoint, psycopg.Connection[Any]]]:
        for ep in self.endpoints:
            with self.connect(ep.name) as conn:
                yield ep, conn


def _explain_connect_error(ep: Endpoint, exc: Exception) -> str:
    raw = " ".join(str(exc).split())
    msg = redact_text(raw, ep.dsn)
    where = redact_dsn(ep.dsn)
    low = raw.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = "check the user name and password in the DSN"
    elif "does not exist" in low and "database" in low:
        hint = "check the database name in the DSN"
    elif "connection refused" in low or "no such file or directory" in low:
        hint = "is the server running and listening there? (for the local cluster: workbook up)"
    elif "timeout" in low or "could not translate host name" in low or "resolve host" in low:
        hint = "check the host name and that it is reachable from here"
    else:
        hint = "check the DSN and that the server accepts connections from here"
    return f"cannot connect to {ep.name} at {where!r}: {msg}; {hint}"
