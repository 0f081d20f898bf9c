"""A Target: how to reach a primary and its read replicas, and whether writes are allowed.

Everything above the cluster layer (dataset loading, experiments, reports) talks only to a
Target, so the local embedded cluster and a user's own (e.g. managed) cluster are used the same
way. External targets are read-only unless the user says otherwise: their connections run with
``default_transaction_read_only=on`` and :meth:`Target.require_writes` refuses up front.

Passwords never leave this module in clear: ``repr``, ``str`` and error messages show DSNs
through :func:`redact_dsn`.

TLS: a DSN's ``sslmode`` and ``sslrootcert`` (or ``from_dsn(..., sslmode=, sslrootcert=)``, or
libpq's ``PGSSLMODE``/``PGSSLROOTCERT``) are written into every endpoint's DSN, so psycopg and the
pgbench the traffic engine runs (whose environment gets them as ``PGSSLMODE``/``PGSSLROOTCERT``)
connect the same way. Toward a host that is not loopback, ``sslmode=disable`` is refused and a
connection that ends up without TLS (``allow``/``prefer`` against a server without it) is closed,
unless the target is made with ``allow_plaintext=True`` (``--allow-plaintext``,
``WORKBOOK_ALLOW_PLAINTEXT=1``). :meth:`Target.status` shows each node's TLS version and cipher.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
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
        if len(pw) >= 8:  # long enough that it only ever occurs as itself
            text = text.replace(pw, REDACTED)
        else:  # a short one ("p") only as a token of its own: not every "p" of "primary" (that spelled it out)
            text = re.sub(rf"(?<![A-Za-z0-9_]){re.escape(pw)}(?![A-Za-z0-9_])", REDACTED, text)
    return text


#: libpq's sslmode values, weakest first; the first three may end up without TLS
SSLMODES: tuple[str, ...] = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
PLAINTEXT_HOW = "use sslmode=verify-full sslrootcert=CA.crt in the DSN, or pass --allow-plaintext (WORKBOOK_ALLOW_PLAINTEXT=1) if this network is trusted"


def _is_loopback(host: str) -> bool:
    """A Unix socket, ``localhost`` or a loopback address (a name is not resolved)."""
    host = host.strip()
    if not host or host.startswith(("/", "@")) or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def remote_hosts(params: dict[str, str]) -> list[str]:
    """The hosts of a parsed DSN that are not loopback (``hostaddr`` wins over ``host``, as in libpq)."""
    raw = params.get("hostaddr") or params.get("host") or os.environ.get("PGHOSTADDR") or os.environ.get("PGHOST") or ""
    return [h for h in raw.split(",") if not _is_loopback(h)]


def with_tls(dsn: str, sslmode: str | None = None, sslrootcert: str | None = None, *, allow_plaintext: bool = False) -> str:
    """``dsn`` with its TLS options settled: ``sslmode``/``sslrootcert`` given here, else the DSN's
    own, else libpq's ``PGSSLMODE``/``PGSSLROOTCERT``; written into the DSN (pgbench's environment is
    built from it). Refuses a conflict, an unknown mode, a missing CA file, and ``sslmode=disable``
    toward a non-loopback host unless ``allow_plaintext``."""
    from psycopg import conninfo

    params = dsn_params(dsn)
    shown = redact_dsn(dsn)
    for key, given, env in (("sslmode", sslmode, "PGSSLMODE"), ("sslrootcert", sslrootcert, "PGSSLROOTCERT")):
        own = params.get(key)
        if given is not None and own is not None and str(own) != given:
            raise TargetError(f"the DSN {shown!r} says {key}={own} but {key}={given} was also given; keep one")
        value = given if given is not None else own if own is not None else os.environ.get(env) or None
        if value is not None:
            params[key] = str(value)
    mode = params.get("sslmode")
    if mode is not None and mode not in SSLMODES:
        raise TargetError(f"sslmode {mode!r} is not one of {', '.join(SSLMODES)} (in {shown!r})")
    cert = params.get("sslrootcert")
    if cert and cert != "system" and not os.path.isfile(os.path.expanduser(str(cert))):
        raise TargetError(f"the CA file sslrootcert={cert!r} does not exist or is not a file; give the CA "
                          "certificate that signed the server's (PEM)")  # fmt: skip
    remote = remote_hosts(params)
    if mode == "disable" and remote and not allow_plaintext:
        raise TargetError(f"sslmode=disable toward {remote[0]} would send passwords and data in clear; {PLAINTEXT_HOW}")
    if params == dsn_params(dsn):
        return dsn  # nothing to add: keep the user's text (URI or key=value) as it is
    return conninfo.make_conninfo(**params)


@dataclass(frozen=True)
class TLSState:
    """What ``pg_stat_ssl`` says about one connection."""

    ssl: bool
    version: str | None = None
    cipher: str | None = None
    bits: int | None = None

    def __str__(self) -> str:
        return f"{self.version} {self.cipher}" if self.ssl else "off"


def tls_state(conn: psycopg.Connection[Any]) -> TLSState:
    """The TLS state of ``conn`` as the server sees it (pg_stat_ssl of its own backend)."""
    row = conn.execute("SELECT ssl, version, cipher, bits FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    if row is None:
        return TLSState(bool(conn.pgconn.ssl_in_use))
    return TLSState(bool(row[0]), row[1], row[2], row[3])


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
    #: connections without TLS to non-loopback hosts are allowed (refused by default)
    allow_plaintext: bool = False

    @classmethod
    def from_dsn(
        cls,
        primary: str,
        replicas: list[str] | tuple[str, ...] = (),
        *,
        allow_writes: bool = False,
        sslmode: str | None = None,
        sslrootcert: str | os.PathLike[str] | None = None,
        allow_plaintext: bool = False,
    ) -> Target:
        """A user's own cluster. Read-only unless ``allow_writes=True``.

        ``sslmode``/``sslrootcert`` apply to every DSN that does not set them (see :func:`with_tls`);
        without TLS toward a non-loopback host it refuses unless ``allow_plaintext=True``."""
        if isinstance(primary, str) and not primary.strip():
            raise TargetError("empty primary DSN; pass --dsn 'postgresql://user@host/db' or set WORKBOOK_DSN")
        if isinstance(replicas, str):
            raise TargetError("replicas must be a list of DSNs, not one string; e.g. ['host=replica1 ...']")
        cert = None if sslrootcert is None else os.fspath(sslrootcert)
        primary, *rest = (with_tls(d, sslmode, cert, allow_plaintext=allow_plaintext) for d in (primary, *replicas))
        return cls(
            primary=Endpoint("primary", primary),
            replicas=tuple(Endpoint(f"replica{i}", d) for i, d in enumerate(rest, 1)),
            allow_writes=allow_writes,
            kind="external",
            allow_plaintext=allow_plaintext,
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
        return Target(primary=self.pooler, replicas=(), allow_writes=self.allow_writes, kind=self.kind,
                      allow_plaintext=self.allow_plaintext)

    def __repr__(self) -> str:
        reps = ", ".join(redact_dsn(r.dsn) for r in self.replicas)
        return (
            f"Target(kind={self.kind!r}, primary={redact_dsn(self.primary.dsn)!r}, "
            f"replicas=[{reps}], allow_writes={self.allow_writes})"
        )

    __str__ = __repr__

    @property
    def needs_tls(self) -> bool:
        """Must a client (pgbench) speak TLS to reach every node? (A DSN asks for it, or a node is not
        loopback and plaintext is not allowed.)"""
        for ep in (*self.endpoints, *((self.pooler,) if self.pooler else ())):
            params = dsn_params(ep.dsn)
            if params.get("sslmode") in SSLMODES[3:] or (remote_hosts(params) and not self.allow_plaintext):
                return True
        return False

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
            conn = psycopg.connect(ep.dsn, autocommit=autocommit, **kwargs)
        except psycopg.OperationalError as exc:
            raise ConnectionFailed(_explain_connect_error(ep, exc)) from None
        if not (self.allow_plaintext or conn.pgconn.ssl_in_use or _is_loopback(conn.info.host)):
            host = conn.info.host
            conn.close()
            raise ConnectionFailed(f"the connection to {ep.name} at {host} is not encrypted (the server offered no TLS, "
                                   f"or sslmode allowed going without); {PLAINTEXT_HOW}")  # fmt: skip
        return conn

    def status(self) -> list[NodeStatus]:
        """Each server's role (as the server itself reports it), state and replay lag.

        ``pid`` is None (the server's process is not ours to see) and ``port`` comes from the DSN.
        An unreachable primary raises :class:`ConnectionFailed` (the DSN is wrong or the server is
        down: nothing else can work); an unreachable replica shows ``state="unreachable"``.
        """
        from ._probe import NodeStatus, probe, replica_lag, replica_state

        found: list[tuple[Endpoint, Any]] = []
        tls: dict[str, dict[str, Any]] = {}
        for ep in self.endpoints:
            try:
                with self.connect(ep.name) as conn:
                    found.append((ep, probe(conn)))
                    tls[ep.name] = asdict(tls_state(conn))
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
                out.append(NodeStatus(ep.name, "primary", None, port, "running", None, None, tls=tls[ep.name]))
            else:
                lag_b, lag_s = replica_lag(p, primary_lsn)
                out.append(NodeStatus(ep.name, "replica", None, port, replica_state(p), lag_b, lag_s, tls=tls[ep.name]))
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
    elif "certificate verify failed" in low or "server certificate for" in low or "root certificate" in low:
        hint = ("the server's certificate does not check out against sslrootcert (or its name does not match the "
                "host): give the CA that signed it, and connect by the name or address the certificate carries")
    elif "server does not support ssl" in low:
        hint = "the server has no TLS: enable ssl there, or pass --allow-plaintext with sslmode=disable on a trusted network"
    elif "no encryption" in low and "pg_hba" in low:
        hint = "the server accepts only TLS connections from here: use sslmode=verify-full sslrootcert=CA.crt"
    elif "does not exist" in low and "database" in low:
        hint = "check the database name in the DSN"
    elif "connection refused" in low or "no such file or directory" in low:
        # libpq already asks "Is the server running ...?"; the hint adds only what it does not say
        hint = ("for the local cluster: workbook up" if "is the server running" in low
                else "is the server running and listening there? (for the local cluster: workbook up)")
    elif "timeout" in low or "could not translate host name" in low or "resolve host" in low:
        hint = "check the host name and that it is reachable from here"
    else:
        hint = "check the DSN and that the server accepts connections from here"
    return f"cannot connect to {ep.name} at {where!r}: {msg}; {hint}"
