"""A Target: how to reach a primary and its read replicas, and whether writes are allowed.

Everything above the cluster layer (dataset loading, experiments, reports) talks only to a
Target, so the local embedded cluster and a user's own (e.g. managed) cluster are used the same
way. External targets are read-only unless the user says otherwise: their connections run with
``default_transaction_read_only=on`` and :meth:`Target.require_writes` refuses up front.

Passwords never leave this module in clear: ``repr``, ``str`` and error messages show DSNs
through :func:`redact_dsn`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConnectionFailed, ReadOnlyTarget, TargetError

if TYPE_CHECKING:  # psycopg is imported lazily: the CLI starts faster without it
    import psycopg

    from ._probe import NodeStatus

REDACTED = "********"

#: connection options whose values are secrets (libpq's keywords)
SECRET_KEYS: tuple[str, ...] = ("password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key")
_SECRET_KEYS_RE = "|".join(SECRET_KEYS)
# key=value form: a secret option's value, quoted (to its closing quote, or to the end when it has
# none) or bare (to the next whitespace)
_KV_SECRET = re.compile(rf"(?<![\w.])((?:{_SECRET_KEYS_RE})\s*=\s*)('(?:[^'\\]|\\.)*(?:'|\\?$)|(?:\\.|\S)*)", re.IGNORECASE | re.DOTALL)
# URI query parameters: a secret's value runs to the next '&' (or '#', or the end)
_URI_SECRET = re.compile(rf"([?&](?:{_SECRET_KEYS_RE})=)([^&#]*)", re.IGNORECASE | re.DOTALL)
_URI_SCHEME = re.compile(r"^\s*postgres(?:ql)?://", re.IGNORECASE)
_URI_QUERY = re.compile(r"\?[A-Za-z_]+=")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _uri_password_span(dsn: str) -> tuple[int, int] | None:
    """Where the password of a URI DSN is, found in the text alone (no parsing that could fail).

    It runs from the first ':' of the user info to the *last* '@' before the query string, so a
    password holding '@', '/', spaces or bad '%' escapes is covered whole (libpq would split it
    at the wrong place and echo the pieces in its errors).
    """
    m = _URI_SCHEME.match(dsn)
    if not m:
        return None
    start = m.end()
    rest = dsn[start:]
    query = _URI_QUERY.search(rest)
    region = rest[: query.start()] if query else rest
    at = region.rfind("@")
    if at < 0:
        return None
    first_at = region.find("@")
    colon = region.find(":")
    if colon < 0 or colon > first_at:  # a user without a password (a ':' after '@' is a port)
        return None
    return start + colon + 1, start + at


def _textual_secrets(dsn: str) -> list[str]:
    """The secret values in a DSN as they are written in it (and URL-decoded), longest first."""
    found: list[str] = []
    span = _uri_password_span(dsn)
    if span is not None:
        found.append(dsn[span[0] : span[1]])
    uri = bool(_URI_SCHEME.match(dsn))
    for m in (*_URI_SECRET.finditer(dsn), *(() if uri else _KV_SECRET.finditer(dsn))):
        value = m.group(2)
        found.append(value)
        if value.startswith("'"):
            inner = value[1:-1] if value.endswith("'") and len(value) > 1 else value[1:]
            found.append(inner)
            found.append(re.sub(r"\\(.)", r"\1", inner))
    from urllib.parse import unquote

    found += [unquote(v, errors="replace") for v in found if "%" in v]
    return sorted({v for v in found if v}, key=len, reverse=True)


def redact_dsn_text(dsn: str) -> str:
    """``dsn`` with every secret replaced, working on the text alone: it never parses, never raises.

    Covers the URI form (``postgresql://user:PASSWORD@host/db``, and ``?password=`` in its query)
    and the key=value form (``password=...`` quoted or bare), even when the DSN is malformed
    (a '/', a space or a bad '%' escape in a URI password, an unterminated quote, a NUL byte).
    """
    if not isinstance(dsn, str):
        return "<not a DSN>"
    span = _uri_password_span(dsn)
    if span is not None:
        dsn = dsn[: span[0]] + REDACTED + dsn[span[1] :]
    dsn = _URI_SECRET.sub(lambda m: m.group(1) + REDACTED, dsn)
    if not _URI_SCHEME.match(dsn):
        dsn = _KV_SECRET.sub(lambda m: m.group(1) + REDACTED, dsn)
    return dsn.replace("\x00", "\\x00")


def _check_dsn_text(dsn: object) -> str:
    """Refuse, before any parser sees it, a DSN that would be misread or whose errors would echo it."""
    if not isinstance(dsn, str):
        raise TargetError(f"a DSN must be a string, not {type(dsn).__name__}; e.g. 'postgresql://user@host/db'")
    shown = redact_dsn_text(dsn)
    if "\x00" in dsn:
        raise TargetError(f"the DSN {shown!r} contains a NUL byte; remove it")
    try:
        dsn.encode()
    except UnicodeEncodeError:
        raise TargetError(f"the DSN {shown!r} is not valid UTF-8; check its encoding") from None
    span = _uri_password_span(dsn)
    if span is not None:
        pw = dsn[span[0] : span[1]]
        bad = [what for what, hit in (
            ("'@' (write %40)", "@" in pw), ("'/' (write %2F)", "/" in pw),
            ("whitespace (write %20)", any(c.isspace() for c in pw)),
            ("a '%' that is not an escape (write %25)", bool(_BAD_ESCAPE.search(pw))),
        ) if hit]  # fmt: skip
        if bad:
            raise TargetError(
                f"the password in the DSN {shown!r} has {', '.join(bad)}: percent-encode it in a URI, "
                "or use the key=value form: host=... user=... password='...' dbname=..."
            )
    return shown


def _safe_parse_error(exc: BaseException, dsn: str) -> str:
    """libpq's parse error about ``dsn`` with secrets removed and every quoted value hidden.

    Its messages quote pieces of the DSN (a piece of a badly split password may be among them):
    only quoted connection-option names are kept.
    """
    from psycopg import pq

    keywords = {o.keyword.decode() for o in pq.Conninfo.get_defaults()}

    def _keep_quoted(m: re.Match[str]) -> str:
        inner = m.group(1)
        return m.group(0) if inner in keywords or (len(inner) == 1 and not inner.isalnum()) else '"..."'

    text = redact_text(" ".join(str(exc).split()), dsn)
    return re.sub(r'"([^"]*)"', _keep_quoted, text)


def dsn_params(dsn: str) -> dict[str, str]:
    """Parse a key=value or URI DSN; raise a TargetError (redacted) when it is malformed."""
    from psycopg import conninfo

    shown = _check_dsn_text(dsn)
    try:
        return conninfo.conninfo_to_dict(dsn)  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001 - psycopg.ProgrammingError, ValueError ...; its text may echo the DSN
        raise TargetError(
            f"not a valid PostgreSQL DSN {shown!r} ({_safe_parse_error(exc, dsn)}); use "
            "'postgresql://user:password@host:5432/dbname' or 'host=... dbname=...'"
        ) from None


def redact_dsn(dsn: str) -> str:
    """The DSN with its secrets replaced, in key=value form (textually redacted when it does not
    parse); never raises."""
    from psycopg import conninfo

    try:
        _check_dsn_text(dsn)
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - never raises: the textual redaction needs no parser
        return redact_dsn_text(dsn)
    for key in SECRET_KEYS:
        if params.get(key):
            params[key] = REDACTED
    return conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def _secrets_of(dsn: str) -> list[str]:
    """Every secret of ``dsn``: as written in its text, and as libpq parses it."""
    from psycopg import conninfo

    found = _textual_secrets(dsn) if isinstance(dsn, str) else []
    try:  # a DSN refused by the textual check is never parsed: libpq would split it at the wrong place
        _check_dsn_text(dsn)
        params = conninfo.conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - the textual secrets above are all there is
        params = {}
    found += [str(params[k]) for k in SECRET_KEYS if params.get(k)]
    return found


def redact_text(text: str, *dsns: str) -> str:
    """``text`` with each DSN, and each DSN's secrets (as written, parsed or URL-encoded), replaced."""
    from urllib.parse import quote

    secrets: set[str] = set()
    for dsn in dsns:
        if not isinstance(dsn, str) or not dsn:
            continue
        text = text.replace(dsn, redact_dsn(dsn))
        for pw in _secrets_of(dsn):
            secrets.update((pw, quote(pw, safe="")))
    for pw in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(pw, REDACTED)
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
    #: a connection pooler (PgBouncer, transaction pooling) in front of the primary, if any;
    #: ``connect("pooler")`` reaches it, and it is not one of ``endpoints`` (runs do not spread to it)
    pooler: Endpoint | None = None

    @classmethod
    def from_dsn(
        cls,
        primary: str,
        replicas: list[str] | tuple[str, ...] = (),
        *,
        allow_writes: bool = False,
    ) -> Target:
        """A user's own cluster. Read-only unless ``allow_writes=True``."""
        if isinstance(primary, str) and not primary.strip():
            raise TargetError("empty primary DSN; pass --dsn 'postgresql://user@host/db' or set WORKBOOK_DSN")
        if isinstance(replicas, str):
            raise TargetError("replicas must be a list of DSNs, not one string; e.g. ['host=replica1 ...']")
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
        if name == "pooler" and self.pooler is not None:
            return self.pooler
        known = ", ".join(e.name for e in self.endpoints) + (", pooler" if self.pooler is not None else "")
        raise TargetError(f"no node {name!r} in this target; known nodes: {known}")

    def through_pooler(self) -> Target:
        """This target with the pooler as its only node (named ``pooler``): what an app configured with
        the pooler's DSN sees. Refused when there is no pooler."""
        if self.pooler is None:
            raise TargetError("this target has no pooler; start one with 'workbook up --pooler' "
                              "(LocalCluster.add_pooler())")  # fmt: skip
        return Target(primary=self.pooler, replicas=(), allow_writes=self.allow_writes, kind=self.kind)

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
        dsn_params(ep.dsn)  # a malformed DSN is refused (redacted) before libpq can echo it
        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("application_name", "workbook")
        if ep.name == "pooler":  # transaction pooling (PgBouncer < 1.21): no server-side prepared statements
            kwargs.setdefault("prepare_threshold", None)
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
