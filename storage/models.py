"""The database tables: who owns what, who may do what, jobs, idempotency keys, the audit log.

Docker is the source of truth for what exists; these tables for who owns it and what was done.
(Domains and routes join them with the traffic work.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy import false as sa_false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every database (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class EnvironmentRecord(Base):
    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    owner: Mapped[str | None] = mapped_column(String(32))
    cloned_from: Mapped[str | None] = mapped_column(String(63))
    notify_channel: Mapped[str | None] = mapped_column(String(32))
    # "creating" while a clone job holds the name; "ready" once it exists in Docker
    state: Mapped[str] = mapped_column(String(16), default="ready")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # a clone's: when it is stopped (then deleted, CLONEBOT_EXPIRY_GRACE later); None: never
    expires_at: Mapped[datetime | None] = mapped_column(index=True)
    # how far its expiry went (services.expiry.Stage): reminders sent, stopped; 0 once extended
    expiry_stage: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # why clonebot stopped it, while it is stopped (services.sleep.Stopped): None when running
    stopped: Mapped[str | None] = mapped_column(String(16))
    # the data its last copy (clone or refresh) wrote: what counts against its owner's quota
    copied_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # changes to it (swap, split, failover, delete, rename, refresh, hand-over, unprotect)
    # need a second person's approval (services/approvals.py)
    protected: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    # the Docker engine its containers are on (services/fleet.py); kept for when it is away
    engine: Mapped[str] = mapped_column(String(32), default="local", server_default="local")

    collaborators: Mapped[list[Collaborator]] = relationship(
        back_populates="environment", cascade="all, delete-orphan", lazy="selectin"
    )
    channels: Mapped[list[ChannelBinding]] = relationship(
        back_populates="environment", cascade="all, delete-orphan", lazy="selectin"
    )


class DomainBinding(Base):
    """A custom domain bound to an environment (what *swap domains* exchanges)."""

    __tablename__ = "domains"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Certificate(Base):
    """A TLS certificate of a custom domain: it belongs to the domain, whichever environment
    holds it, so a swap moves the traffic and the same certificate is served. Its chain and
    key are a file of the router folder (``certs/<domain>.pem``, mode 600), never here."""

    __tablename__ = "certificates"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    issuer: Mapped[str] = mapped_column(Text)
    serial: Mapped[str] = mapped_column(String(64))  # upper-case hex, as openssl prints it
    not_before: Mapped[datetime] = mapped_column()
    not_after: Mapped[datetime] = mapped_column(index=True)  # what a renewal looks for
    fingerprint: Mapped[str] = mapped_column(String(64))  # SHA-256 of the leaf, hex
    added_by: Mapped[str] = mapped_column(String(32))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    # "manual": a person gave the chain and key; "acme": issued by CLONEBOT_ACME_DIRECTORY,
    # renewed by `serve` (services/traffic/renewals.py), ``added_at`` its last issuance
    source: Mapped[str] = mapped_column(String(16), default="manual", server_default="manual")
    # an ACME one's next renewal attempt: the start of its renewal window, or after a failed
    # one the backoff's end; None: not renewed (a person's, or one whose renewal stopped)
    renew_at: Mapped[datetime | None] = mapped_column(index=True)
    renew_failures: Mapped[int] = mapped_column(default=0, server_default="0")
    # why `serve` stopped renewing it (expired, its domain unbound): told once, not retried
    renew_stopped: Mapped[str | None] = mapped_column(Text)
    # saved, but HAProxy may still serve the one before: `serve` gives it again from then
    push_at: Mapped[datetime | None] = mapped_column(index=True)


class DomainHttps(Base):
    """How a custom domain is served over plain HTTP and HTTPS: it belongs to the domain, as its
    certificate does, so it stays with the domain through a swap. Off by default (no row)."""

    __tablename__ = "domain_https"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    # plain HTTP is answered with a redirect to HTTPS (once the domain has a certificate)
    redirect: Mapped[bool] = mapped_column(default=False, server_default=sa_false())
    # HTTPS answers carry Strict-Transport-Security with this max-age; None: no HSTS
    hsts_max_age: Mapped[int | None] = mapped_column(Integer)
    changed_by: Mapped[str] = mapped_column(String(32))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Route(Base):
    """How a domain's traffic is shared: a weighted split, or a primary with a backup."""

    __tablename__ = "routes"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "split" or "failover"
    primary_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    secondary_id: Mapped[int] = mapped_column(ForeignKey("environments.id", ondelete="CASCADE"))
    weight: Mapped[int] = mapped_column(Integer, default=100)  # the primary's share, 0..100
    sticky: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Collaborator(Base):
    __tablename__ = "collaborators"

    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    user: Mapped[str] = mapped_column(String(32), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # "viewer" or "operator"

    environment: Mapped[EnvironmentRecord] = relationship(back_populates="collaborators")


class ChannelBinding(Base):
    __tablename__ = "channel_bindings"

    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    channel: Mapped[str] = mapped_column(String(32), primary_key=True)

    environment: Mapped[EnvironmentRecord] = relationship(back_populates="channels")


class JobState(StrEnum):
    """Where a job is. Unfinished (queued, running, recovering), it holds the environments it
    works on; finished, it succeeded, failed before it changed anything, or was rolled back."""

    QUEUED = "queued"
    RUNNING = "running"
    RECOVERING = "recovering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled back"


UNFINISHED = (JobState.QUEUED, JobState.RUNNING, JobState.RECOVERING)


class Job(Base):
    """A clone, refresh, rename or delete, recorded before it starts.

    While unfinished (queued, running, recovering) a job holds the environments it works on
    (see ``services/job_locks.py``): its rows are the locks, shared by every process.
    """

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # services.job_locks.JobKind
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)  # JobState
    environment: Mapped[str] = mapped_column(String(63))
    source: Mapped[str | None] = mapped_column(String(63))
    requester: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    steps: Mapped[list[Any]] = mapped_column(default=list)
    # source containers this job paused or stopped, so recovery can resume them
    frozen: Mapped[list[Any]] = mapped_column(default=list)
    step: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column()
    freeze_ms: Mapped[int | None] = mapped_column(Integer)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column()
    slack_channel: Mapped[str | None] = mapped_column(String(32))
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # disk the job's copy will still take: other jobs' disk checks count it as used
    reserved_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # the Docker engine of its environment (a clone's: the one it is made on), and of its
    # source (the one frozen): recovery resumes and removes there
    engine: Mapped[str] = mapped_column(String(32), default="local", server_default="local")
    source_engine: Mapped[str | None] = mapped_column(String(32))


class Approval(Base):
    """A change to a protected environment, waiting for (or given) a second person's approval.

    Bound to that exact change (``digest`` of its kind and arguments) and to who asked;
    used once; lapsing after CLONEBOT_APPROVAL_TTL.
    """

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # services.approvals.ChangeKind
    args: Mapped[dict[str, Any]] = mapped_column()
    digest: Mapped[str] = mapped_column(String(64), index=True)
    environments: Mapped[list[Any]] = mapped_column()  # the names it touches, as asked
    action: Mapped[str] = mapped_column(String(32))  # what an approver must be allowed
    requested_by: Mapped[str] = mapped_column(String(32))
    channel: Mapped[str | None] = mapped_column(String(32))
    # pending, approved, rejected, used (services.approvals.ApprovalState)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    decided_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    decided_at: Mapped[datetime | None] = mapped_column()
    slack_channel: Mapped[str | None] = mapped_column(String(32))  # its message, if posted
    slack_ts: Mapped[str | None] = mapped_column(String(32))


class IdempotencyKey(Base):
    """A delivery already acted on (Slack retries carry the same key)."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    # kept for a day (Slack retries within minutes), then removed by the supervisor
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    environment: Mapped[str | None] = mapped_column(String(63), index=True)
    channel: Mapped[str | None] = mapped_column(String(32))
    allowed: Mapped[bool] = mapped_column()
    reason: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RefreshSchedule(Base):
    """A clone refreshed from its source on a cron schedule, by ``serve``
    (``services/schedules.py``); it follows the clone's renames and goes with its delete."""

    __tablename__ = "refresh_schedules"

    environment_id: Mapped[int] = mapped_column(
        ForeignKey("environments.id", ondelete="CASCADE"), primary_key=True
    )
    cron: Mapped[str] = mapped_column(String(100))  # five fields: minute hour day month weekday
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")  # IANA name the cron reads
    # the refreshes are asked in this user's name, and checked again as each runs
    set_by: Mapped[str] = mapped_column(String(32))
    # the next occurrence; a sweep claims it by moving it on (one process of those sharing
    # the database runs it)
    next_run: Mapped[datetime] = mapped_column(index=True)
    last_run: Mapped[datetime | None] = mapped_column()
    last_outcome: Mapped[str | None] = mapped_column(String(16))  # services.schedules.Outcome
    last_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    last_job: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EngineRecord(Base):
    """A Docker engine added with ``clonebot engine add`` (those of CLONEBOT_ENGINES and
    ``local`` are settings, not rows)."""

    __tablename__ = "engines"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(String(255))
    # the folder of its TLS client files (ca.pem, cert.pem, key.pem), for a tcp:// URL
    keys_dir: Mapped[str | None] = mapped_column(String(4096))
    # what the engine called itself when added (``docker info`` ID): the same engine is not
    # added again under another name or URL, even while it is away
    engine_id: Mapped[str] = mapped_column(String(128))
    added_by: Mapped[str] = mapped_column(String(32))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
