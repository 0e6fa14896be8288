"""On-clone hooks on the real engine: a real PostgreSQL masked by the shipped recipe, a failing
hook rolling its clone back with its secrets masked, hostile declarations refused; and the
parser and the masking on their own."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.access import Request
from services.context import Services
from services.demo_image import BIN, ensure_postgres_image
from services.demo_nodes import DB_START, SOCKET
from services.demo_nodes import IMAGE as PG_IMAGE
from services.docker import DockerClient
from services.environments import PROJECT, SCALING
from services.errors import BadRequest, HookFailed
from services.hooks import (
    FILE,
    LABEL,
    MAX_FILE_BYTES,
    WORKING_DIR,
    OutputTail,
    mask_secrets,
    parse_hooks_file,
    secret_values,
)
from services.jobs import run_job, submit_clone
from services.lifecycle import clone_environment, refresh_clone
from services.settings import Settings
from storage import repositories as repo
from tests.conftest import (
    IMAGE,
    OWNER,
    MakeSource,
    compose_labels,
    in_volume,
    remove_projects,
)

RECIPE = Path(__file__).parents[2] / "deploy" / "recipes" / "mask-users.sql"
MASK_KEY = "k3y-0f-the-test-" + secrets.token_hex(8)
USERS = [
    ("alice@example.com", "Alice Martin"),
    ("bob@example.org", "Bob Stone"),
    ("carol@example.net", "Alice Martin"),  # a name twice: masked the same way twice
    ("dave@example.com", None),
]
MASKING = f"""on-clone:
  db: |
    export PATH={BIN}:$PATH
    for i in $(seq 120); do pg_isready -h {SOCKET} -q && break; sleep 0.5; done
    psql -h {SOCKET} -U postgres -d postgres -v ON_ERROR_STOP=1 \\
      -v mask_key="$CLONEBOT_MASK_KEY" -f /clonebot/mask-users.sql
"""


# -- the parser and the masking ---------------------------------------------------------------
def test_a_clonebot_yml_declares_hooks_per_layer() -> None:
    text = "on-clone:\n  db: echo one\n  web:\n    - echo two\n    - echo three\n"
    hooks = parse_hooks_file(text=text, layers=["db", "web"], origin="/p/clonebot.yml")
    assert [(h.layer, h.command) for h in hooks] == [
        ("db", "echo one"),
        ("web", "echo two"),
        ("web", "echo three"),
    ]
    assert parse_hooks_file(text="", layers=["db"], origin="f") == []
    assert parse_hooks_file(text="on-clone:\n", layers=["db"], origin="f") == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- db: x\n", "must be a mapping with the key on-clone, not a list"),
        ("on_clone:\n  db: x\n", "unknown key 'on_clone' (only on-clone is known)"),
        ("on-clone: [x]\n", "on-clone must map layer names to commands, not be a list"),
        ("on-clone:\n  cache: x\n", "'cache' is not a layer of the environment (db, web)"),
        ("on-clone:\n  1: x\n", "'1' is not a layer of the environment"),
        ("on-clone:\n  db: {a: b}\n", "layer db: a command is text, not a mapping"),
        ("on-clone:\n  db: [[x]]\n", "layer db: a command is text, not a list"),
        ("on-clone:\n  db: 3\n", "layer db: a command is text, not a int"),
        ("on-clone:\n  db: '  '\n", "the command is empty"),
        ("on-clone:\n  db: " + "x" * 20000 + "\n", "longer than 16384 characters"),
        ("on-clone:\n  db: [x\n", "not valid YAML at line 3, column 1"),
        ("on-clone: !!python/object/apply:os.system ['id']\n", "not valid YAML"),
        ("a: &a [x, x]\nb: &b [*a, *a]\non-clone: *b\n", "unknown key 'a'"),
    ],
)
def test_a_bad_clonebot_yml_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_hooks_file(text=text, layers=["db", "web"], origin="/srv/shop/clonebot.yml")
    assert refused.value.message.startswith("/srv/shop/clonebot.yml: ")
    assert problem in refused.value.message
    assert len(refused.value.message) < 200


def test_credentials_are_masked() -> None:
    text = "\n".join(
        [
            "connect postgres://app:hunter2@db:5432/app failed",
            "password=opensesame user=bob",
            '{"api_key": "abc123def", "token":"t0k"}',
            "DB_PASSWORD: letmein",
            "--secret=s3cr3t --verbose",
            "slack xoxb-1234-5678-abcdefgh and xapp-1-A0-xyz",
            "aws AKIAIOSFODNN7EXAMPLE in use",
            "Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl",
            "gh token ghp_abcdefghijklmnopqrstuvwx1234",
            "DETAIL:  Key (email)=(alice@example.com) already exists.",
            "the node says envsecretvalue here",
            "3 rows updated, all good",
        ]
    )
    masked = mask_secrets(text, values=["envsecretvalue"])
    for secret in (
        "hunter2", "opensesame", "abc123def", "t0k", "letmein", "s3cr3t", "xoxb-1234",
        "xapp-1-A0", "AKIAIOSFODNN7EXAMPLE", "eyJhbGciOi", "ghp_abcdef", "alice@example.com",
        "envsecretvalue",
    ):  # fmt: skip
        assert secret not in masked, secret
    assert "postgres://app:***@db:5432/app" in masked
    assert "user=bob" in masked and "--verbose" in masked
    assert masked.endswith("3 rows updated, all good")


def test_secret_values_come_from_names_that_say_so_and_any_long_value() -> None:
    env = ["API_TOKEN=tok-123", "DB_PASSWORD=pw-456", "AWS_SECRET_ACCESS_KEY=sk/789", "X_KEY=ab"]
    env += ["SMTP_PASS=mail-1", "SENTRY_DSN=dsn-22", "PLAIN=short", "PATH=/usr/local/bin:/bin"]
    env += ["DATABASE_URL=postgres://db/app"]
    assert secret_values(env=env) == [
        "tok-123", "pw-456", "sk/789", "mail-1", "dsn-22", "postgres://db/app"
    ]  # fmt: skip


def test_what_clients_print_of_passwords_is_masked() -> None:
    """What the review found getting through (2026-12-06)."""
    text = "\n".join(
        [
            "DB_PASS=hunter22x",
            "pass: letmein77",
            "mysql -u root -phunter33y -e 'select 1'",
            "pg_dump --password hunter44z app",
            "Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "sent to https://0123456789abcdef0123456789abcdef@sentry.example.com/4",
            "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj",
            "-----END PRIVATE KEY-----",
            "done: 3 rows",
        ]
    )
    masked = mask_secrets(text)
    for secret in (
        "hunter22x", "letmein77", "hunter33y", "hunter44z", "YWxhZGRpbjpvcGVuc2VzYW1l",
        "0123456789abcdef0123456789abcdef", "MIIEvQIBADANBgkqhkiG9w0BAQEF",
    ):  # fmt: skip
        assert secret not in masked, secret
    assert "mysql -u root -p***" in masked and masked.endswith("done: 3 rows")


def test_the_output_tail_is_bounded_and_masked_across_lines() -> None:
    tail = OutputTail(lines=3)
    tail.feed(b"".join(b"line %d\n" % i for i in range(100)))
    tail.feed(b"x" * 100_000)  # a line without end, in two pieces
    tail.feed(b"y" * 100_000 + b"\nmulti-line secret: part one\npart two\n")
    lines = tail.masked(values=["part one\npart two"])
    assert lines == ["x" * 300, "multi-line secret: ***"]


# -- on the engine ----------------------------------------------------------------------------
async def _pg_ready(docker: DockerClient, node: str) -> None:
    deadline = time.monotonic() + 60
    while (await _psql(docker, node, "SELECT 1", check=False))[0] != 0:
        assert time.monotonic() < deadline, await docker.container_logs(node)
        await asyncio.sleep(0.3)


async def _psql(
    docker: DockerClient, node: str, sql: str, *, check: bool = True
) -> tuple[int, str]:
    argv = [f"{BIN}/psql", "-h", SOCKET, "-U", "postgres", "-d", "postgres"]
    argv += ["-v", "ON_ERROR_STOP=1", "-tAF", "|", "-c", sql]
    async with docker.exec_session(node, argv, stdin=False) as session:
        out = "\n".join([line async for line in session.lines()])
        code = await session.exit_code()
    assert code == 0 or not check, out
    return code, out


async def _users(docker: DockerClient, node: str) -> dict[int, tuple[str, str]]:
    _, out = await _psql(docker, node, "SELECT id, email, coalesce(name, '-') FROM users")
    rows = [line.split("|") for line in out.splitlines() if line]
    return {int(i): (email, name) for i, email, name in rows}


def _quoted(text: str | None) -> str:
    return "NULL" if text is None else f"'{text}'"


@pytest.fixture
async def pg_source(
    docker: DockerClient, settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[str, Path]]:
    """A one-layer environment ``db`` running Debian's PostgreSQL, with a ``users`` table, the
    shipped recipe mounted read-only, and a project folder (its Compose working_dir label)
    holding the clonebot.yml that masks it. It and its clones are removed after."""
    await ensure_postgres_image(docker, image=PG_IMAGE, busybox=settings.busybox)
    name = f"h{secrets.token_hex(3)}"
    project = tmp_path / "project"
    project.mkdir()
    (project / FILE).write_text(MASKING)
    try:
        await docker.create_network({"Name": f"{name}_default", "Labels": {PROJECT: name}})
        volume = await docker.create_volume(name=f"{name}_data", labels={PROJECT: name})
        labels = {**compose_labels(name, "db", 1), WORKING_DIR: str(project), SCALING: "stateful"}
        recipe = {"Type": "bind", "Source": str(RECIPE), "Target": "/clonebot/mask-users.sql"}
        await docker.create_container(
            name=f"{name}-db-1",
            config={
                "Image": PG_IMAGE,
                "Cmd": ["sh", "-c", DB_START],
                "Env": [f"CLONEBOT_MASK_KEY={MASK_KEY}"],
                "Labels": {"clonebot.owner": OWNER, **labels},
                "StopSignal": "SIGTERM",
                "HostConfig": {
                    "NetworkMode": f"{name}_default",
                    "Mounts": [
                        {"Type": "volume", "Source": volume, "Target": "/var/lib/postgresql/data"},
                        {**recipe, "ReadOnly": True},
                    ],
                },
            },
        )  # fmt: skip
        await docker.start_container(f"{name}-db-1")
        await _pg_ready(docker, f"{name}-db-1")
        values = ", ".join(f"('{email}', {_quoted(who)})" for email, who in USERS)
        await _psql(
            docker,
            f"{name}-db-1",
            "CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, name text); "
            f"INSERT INTO users (email, name) VALUES {values}",
        )
        yield name, project
    finally:
        await remove_projects(docker, {name, f"{name}-a", f"{name}-b"})


@pytest.mark.docker
@pytest.mark.slow
async def test_the_recipe_masks_users_in_every_clone_alike_and_leaves_the_source(
    docker: DockerClient, settings: Settings, pg_source: tuple[str, Path]
) -> None:
    source, _ = pg_source
    before = await _users(docker, f"{source}-db-1")

    first = await clone_environment(docker, settings, source=source, name=f"{source}-a")
    second = await clone_environment(docker, settings, source=source, name=f"{source}-b")

    assert await _users(docker, f"{source}-db-1") == before, "the source is untouched"
    a = await _users(docker, f"{source}-a-db-1")
    b = await _users(docker, f"{source}-b-db-1")
    assert a == b, "the same source value gives the same fake one in every clone"
    assert a.keys() == before.keys()
    emails = [email for email, _ in a.values()]
    assert len(set(emails)) == len(USERS), "the UNIQUE column holds unique values"
    for uid, (email, who) in a.items():
        real_email, real_name = before[uid]
        assert email != real_email and email.endswith("@example.invalid"), email
        assert real_email.split("@")[0] not in email
        if real_name == "-":
            assert who == "-", "a NULL name stays NULL"
        else:
            assert who != real_name and len(who.split(" ")) == 2, who
    assert a[1][1] == a[3][1], "one name, one fake name"
    [run] = first.hooks
    assert (run.layer, run.node, run.exit_code) == ("db", f"{source}-a-db-1", 0)
    assert MASK_KEY not in json.dumps(dataclasses.asdict(first))
    assert second.hooks[0].exit_code == 0

    # a refresh copies the source's rows again: they are masked again, alike
    await _psql(docker, f"{source}-db-1", "INSERT INTO users (email, name) VALUES "
                "('erin@example.com', 'Erin Wolf')")  # fmt: skip
    refreshed = await refresh_clone(docker, settings, name=f"{source}-a")
    after = await _users(docker, f"{source}-a-db-1")
    assert [r.exit_code for r in refreshed.hooks] == [0]
    assert {uid: after[uid] for uid in a} == a
    new = max(after)
    assert after[new][0].endswith("@example.invalid") and after[new][1] != "Erin Wolf"
    assert "erin" not in json.dumps(after)


@pytest.mark.docker
@pytest.mark.slow
async def test_a_recipe_without_its_key_fails_the_clone(
    docker: DockerClient, settings: Settings, pg_source: tuple[str, Path]
) -> None:
    source, project = pg_source
    (project / FILE).write_text(MASKING.replace('"$CLONEBOT_MASK_KEY"', '""'))

    with pytest.raises(HookFailed) as failed:
        await clone_environment(docker, settings, source=source, name=f"{source}-a")

    assert "the on-clone hook of layer db exited 3" in failed.value.message
    assert await _objects(docker, f"{source}-a") == []
    assert (await _users(docker, f"{source}-db-1"))[1][0] == USERS[0][0]


# -- failures, on a busybox environment -------------------------------------------------------
MakeApp = Callable[..., Awaitable[str]]


@pytest.fixture
async def make_app(docker: DockerClient) -> AsyncIterator[MakeApp]:
    """Factory: a one-node environment (layer ``app``, a volume at /data) with the given
    labels and environment; it and its clones are removed after."""
    made: list[str] = []

    async def make(*, labels: dict[str, str], env: list[str] | None = None) -> str:
        name = f"h{secrets.token_hex(3)}"
        made.append(name)
        await docker.create_network({"Name": f"{name}_default", "Labels": {PROJECT: name}})
        volume = await docker.create_volume(name=f"{name}_data", labels={PROJECT: name})
        await docker.create_container(
            name=f"{name}-app-1",
            config={
                "Image": IMAGE,
                "Cmd": ["sh", "-c", "echo source > /data/who; exec sleep 100000"],
                "Env": env or [],
                "Labels": {"clonebot.owner": OWNER, **compose_labels(name, "app", 1), **labels},
                "StopSignal": "SIGKILL",
                "HostConfig": {
                    "NetworkMode": f"{name}_default",
                    "Mounts": [{"Type": "volume", "Source": volume, "Target": "/data"}],
                },
            },
        )
        await docker.start_container(f"{name}-app-1")
        return name

    try:
        yield make
    finally:
        await remove_projects(docker, {m for n in made for m in (n, f"{n}-a", f"{n}-b")})


async def _objects(docker: DockerClient, name: str) -> list[str]:
    """Every container, network and volume of the environment ``name``, by label or name."""
    found = [c["Names"][0] for c in await docker.list_containers(labels=[f"{PROJECT}={name}"])]
    found += [n["Name"] for n in await docker.list_networks(labels=[f"{PROJECT}={name}"])]
    found += [v["Name"] for v in await docker.list_volumes(labels=[f"{PROJECT}={name}"])]
    found += [c["Names"][0] for c in await docker.list_containers()
              if c["Names"][0].startswith(f"/{name}-")]  # fmt: skip
    found += [n["Name"] for n in await docker.list_networks(labels=[])
              if n["Name"].startswith(f"{name}_")]  # fmt: skip
    found += [v["Name"] for v in await docker.list_volumes(labels=[])
              if v["Name"].startswith(f"{name}_")]  # fmt: skip
    return sorted(set(found))


LEAKY = (
    'echo "starting with postgres://app:hunter2@db/app"; echo "token is $API_TOKEN"; '
    "echo password=opensesame; i=0; while [ $i -lt 30 ]; do echo noise $i; i=$((i+1)); done; "
    'echo "giving up: $API_TOKEN refused"; exit 3'
)


@pytest.mark.docker
async def test_a_failing_hook_fails_the_job_rolls_back_and_masks_its_secrets(
    svc: Services, make_app: MakeApp
) -> None:
    source = await make_app(labels={LABEL: LEAKY}, env=["API_TOKEN=tok-5ecret-value"])
    name = f"{source}-a"
    job = await submit_clone(svc, Request(OWNER), source=source, name=name)

    with pytest.raises(HookFailed) as failed:
        await run_job(svc, job.id)

    message = failed.value.message
    assert message.startswith(
        f"hooks failed: the on-clone hook of layer app exited 3 in {name}-app-1: giving up: "
    )
    assert message.endswith("everything the job created was removed")
    async with svc.sessions() as session:
        record = await repo.get_job(session, job.id)
    assert record is not None and record.state == "rolled back"
    assert record.error == message
    assert record.result is not None
    [run] = record.result["hooks"]
    assert (run["layer"], run["node"], run["exit_code"]) == ("app", f"{name}-app-1", 3)
    assert len(run["output"]) == 20 and run["output"][-1] == "giving up: *** refused"
    stored = json.dumps([record.error, record.result, record.steps])
    for secret in ("tok-5ecret-value", "hunter2", "opensesame"):
        assert secret not in stored and secret not in message
    assert await _objects(svc.docker, name) == [], "nothing of the clone is left"
    assert (await svc.docker.inspect_container(f"{source}-app-1"))["State"]["Running"]


@pytest.mark.docker
async def test_a_hook_past_the_timeout_fails_the_clone(
    docker: DockerClient, settings: Settings, make_app: MakeApp
) -> None:
    source = await make_app(labels={LABEL: "echo masking; sleep 60"})
    quick = settings.model_copy(update={"hook_timeout_s": 1.0})
    started = time.monotonic()

    with pytest.raises(HookFailed, match=r"layer app ran past 1 s \(CLONEBOT_HOOK_TIMEOUT\)"):
        await clone_environment(docker, quick, source=source, name=f"{source}-a")

    assert time.monotonic() - started < 30
    assert await _objects(docker, f"{source}-a") == []


@pytest.mark.docker
async def test_a_snapshot_runs_its_hooks_then_stops_again(
    docker: DockerClient, settings: Settings, make_app: MakeApp
) -> None:
    source = await make_app(labels={LABEL: "echo masked > /data/who"})

    result = await clone_environment(
        docker, settings, source=source, name=f"{source}-a", snapshot=True
    )

    assert [r.exit_code for r in result.hooks] == [0] and not result.started
    node = await docker.inspect_container(f"{source}-a-app-1")
    assert not node["State"]["Running"]
    assert await in_volume(docker, f"{source}-a_data", "cat /v/who") == "masked\n"
    assert await in_volume(docker, f"{source}_data", "cat /v/who") == "source\n"


@pytest.mark.docker
async def test_hostile_declarations_are_refused_before_anything_is_made(
    docker: DockerClient, settings: Settings, make_app: MakeApp, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    empty_label = await make_app(labels={LABEL: "   "})
    with pytest.raises(BadRequest, match=f"label {LABEL} of layer app: the command is empty"):
        await clone_environment(docker, settings, source=empty_label, name=f"{empty_label}-a")
    assert await _objects(docker, f"{empty_label}-a") == []

    source = await make_app(labels={WORKING_DIR: str(project)})
    hostile: list[tuple[Callable[[Path], object], str]] = [
        (lambda f: f.write_text("on-clone:\n  db: x\n"), "'db' is not a layer"),
        (lambda f: f.write_text("x" * (MAX_FILE_BYTES + 1)), f"more than {MAX_FILE_BYTES}"),
        (lambda f: f.write_bytes(b"on-clone:\n  app: \xff\xfe\n"), "not UTF-8 text"),
        (lambda f: f.symlink_to("/etc/passwd"), "not a regular file"),
        (lambda f: f.mkdir(), "not a regular file"),
    ]
    for write, problem in hostile:
        file = project / FILE
        if file.is_dir() and not file.is_symlink():
            file.rmdir()
        else:
            file.unlink(missing_ok=True)
        write(file)
        with pytest.raises(BadRequest) as refused:
            await clone_environment(docker, settings, source=source, name=f"{source}-a")
        assert refused.value.message.startswith(f"{project}/{FILE}: "), refused.value.message
        assert problem in refused.value.message
        assert await _objects(docker, f"{source}-a") == []
    # and a clone whose folder is gone from the Docker host is made, saying so
    file = project / FILE
    file.rmdir()
    project.rmdir()
    result = await clone_environment(docker, settings, source=source, name=f"{source}-b")
    assert f"the project folder {project} is not on the Docker host" in " ".join(result.warnings)


def _started(node: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(node["State"]["StartedAt"][:26].rstrip("Z") + "+00:00")


@pytest.mark.docker
async def test_nothing_serves_the_clone_before_its_data_stores_hooks_are_done(
    docker: DockerClient, settings: Settings, make_source: MakeSource
) -> None:
    """The router sends a running web node traffic: the web layer starts only once the
    database's hook (here 2 s long) has masked the data, after a clone and after a refresh."""
    source = await make_source(web_nodes=1, db_nodes=1, db_labels={LABEL: "sleep 2"})
    clone = f"{source.name}-m"

    result = await clone_environment(docker, settings, source=source.name, name=clone)

    assert [(r.layer, r.exit_code) for r in result.hooks] == [("db", 0)]
    db = await docker.inspect_container(f"{clone}-db-1")
    web = await docker.inspect_container(f"{clone}-web-1")
    assert _started(web) - _started(db) >= timedelta(seconds=2), "web started during the hook"

    await refresh_clone(docker, settings, name=clone)

    db = await docker.inspect_container(f"{clone}-db-1")
    web = await docker.inspect_container(f"{clone}-web-1")
    assert web["State"]["Running"]
    assert _started(web) - _started(db) >= timedelta(seconds=2), "web served during the hook"
