"""On-clone hooks: commands an environment declares, run in its clone's nodes before use.

Declared by the label ``clonebot.on-clone=<command>`` on a layer's containers, or in
``clonebot.yml`` in the Compose project's folder (on the Docker host)::

    on-clone:
      db: psql -v ON_ERROR_STOP=1 -f /recipes/mask-users.sql
      web:
        - rm -rf /var/cache/app/*

Both are anyone's input: they are checked (size, shape, layer names) and a bad one refuses
the clone before anything is made. A hook runs with ``sh -c`` in every node of its layer in
the clone, one node after another (nodes of a stateful layer may share a volume); a non-zero
exit, or a run past ``CLONEBOT_HOOK_TIMEOUT``, fails the clone (``HookFailed``), which is
then rolled back. Output is kept only as its last lines, credentials masked.
"""

from __future__ import annotations

import asyncio
import posixpath
import re
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import yaml

from services.docker import DockerClient
from services.environments import JOB, Environment
from services.errors import BadRequest, DockerFailed, HookFailed
from services.planning import NodePlan
from services.progress import EventSink, step
from services.settings import Settings
from services.volumes import ensure_helper_image

LABEL = "clonebot.on-clone"
WORKING_DIR = "com.docker.compose.project.working_dir"
FILE = "clonebot.yml"
MAX_FILE_BYTES = 64 * 1024  # a recipe inlined with a heredoc fits; a YAML bomb does not
MAX_COMMAND = 16 * 1024
MAX_HOOKS = 32
TAIL_LINES = 20
_KEPT_LINE = 4096  # a line longer than this is cut (a command may print without newlines)
_SHOWN_LINE = 300  # characters of a masked line kept in the record
_BAD_BIND = 400


@dataclass(frozen=True)
class Hook:
    layer: str
    command: str
    origin: str  # where it was declared, for messages: the label, or the file's path


@dataclass
class HookRun:
    """One hook run in one node, as the job's record keeps it."""

    layer: str
    node: str
    exit_code: int | None  # None: still running at CLONEBOT_HOOK_TIMEOUT, given up
    elapsed_ms: int
    output: list[str] = field(default_factory=list)  # the last lines, credentials masked


@dataclass
class Declared:
    hooks: list[Hook]
    warnings: list[str]


async def read_hooks(
    *, docker: DockerClient, settings: Settings, env: Environment, job: str
) -> Declared:
    """The hooks ``env`` declares, data stores' first; ``BadRequest`` for a bad declaration."""
    by_layer: dict[str, list[Hook]] = {layer.name: [] for layer in env.layers}
    for hook in label_hooks(env=env):
        by_layer[hook.layer].append(hook)
    warnings = []
    for folder in _project_folders(env):
        text = await _read_project_file(docker=docker, settings=settings, folder=folder, job=job)
        if text is None:
            warnings.append(
                f"the project folder {folder} is not on the Docker host: no {FILE} was read"
            )
            continue
        origin = posixpath.join(folder, FILE)
        for hook in parse_hooks_file(text=text, layers=list(by_layer), origin=origin):
            by_layer[hook.layer].append(hook)
    # the data stores first: a web layer's hook may read what the database's has masked
    order = sorted(env.layers, key=lambda layer: layer.scaling != "stateful")
    hooks = [hook for layer in order for hook in by_layer[layer.name]]
    if len(hooks) > MAX_HOOKS:
        raise BadRequest(f"{env.name} declares {len(hooks)} on-clone hooks: at most {MAX_HOOKS}")
    return Declared(hooks=hooks, warnings=warnings)


def label_hooks(*, env: Environment) -> list[Hook]:
    """The hooks of the layers' ``clonebot.on-clone`` labels (their first node's)."""
    hooks = []
    for layer in env.layers:
        command = layer.master.labels.get(LABEL)
        if command is None:
            continue
        origin = f"label {LABEL} of layer {layer.name}"
        hooks.append(Hook(layer.name, _checked_command(command, origin=origin), origin))
    return hooks


def parse_hooks_file(*, text: str, layers: list[str], origin: str) -> list[Hook]:
    """The hooks a ``clonebot.yml`` declares, checked against the environment's ``layers``."""

    def refuse(problem: str) -> BadRequest:
        return BadRequest(f"{origin}: {problem}")

    try:
        doc = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise refuse(f"not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise refuse("not valid YAML") from None
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise refuse(f"must be a mapping with the key on-clone, not a {_kind(doc)}")
    if unknown := [key for key in doc if key != "on-clone"]:
        raise refuse(f"unknown key {str(unknown[0])[:40]!r} (only on-clone is known)")
    declared = doc.get("on-clone") or {}
    if not isinstance(declared, dict):
        raise refuse(f"on-clone must map layer names to commands, not be a {_kind(declared)}")
    hooks = []
    for layer, commands in declared.items():
        if not isinstance(layer, str) or layer not in layers:
            known = ", ".join(layers)
            raise refuse(f"{str(layer)[:40]!r} is not a layer of the environment ({known})")
        for command in commands if isinstance(commands, list) else [commands]:
            if not isinstance(command, str):
                raise refuse(f"layer {layer}: a command is text, not a {_kind(command)}")
            hooks.append(Hook(layer, _checked_command(command, origin=origin), origin))
    return hooks


def _checked_command(command: str, *, origin: str) -> str:
    if not command.strip():
        raise BadRequest(f"{origin}: the command is empty")
    if len(command) > MAX_COMMAND:
        raise BadRequest(f"{origin}: the command is longer than {MAX_COMMAND} characters")
    if "\0" in command:
        raise BadRequest(f"{origin}: the command holds a NUL character")
    return command


def _kind(value: object) -> str:
    names = {"dict": "mapping", "list": "list", "str": "text", "NoneType": "nothing"}
    return names.get(type(value).__name__, type(value).__name__)


def _project_folders(env: Environment) -> list[str]:
    """The Compose project folders the environment's nodes name (one, in practice)."""
    folders = {n.labels[WORKING_DIR] for n in env.nodes if n.labels.get(WORKING_DIR)}
    for folder in folders:
        if not folder.startswith("/") or len(folder) > 4096 or not folder.isprintable():
            raise BadRequest(f"label {WORKING_DIR} of {env.name} is not an absolute path")
    return sorted(folders)


async def _read_project_file(
    *, docker: DockerClient, settings: Settings, folder: str, job: str
) -> str | None:
    """``clonebot.yml``'s text ("" when there is none); None when the folder is not there.

    Read on the Docker host, where Compose ran, by a helper container that is created (never
    started) with the folder mounted read-only: the engine's archive API reads its mounts.
    """
    await ensure_helper_image(docker, image=settings.helper_image, busybox=settings.busybox)
    config = {
        "Image": settings.helper_image,
        "Cmd": ["true"],
        "Labels": {"clonebot.helper": "true", JOB: job},  # a crash leaves it to the sweep
        "HostConfig": {
            "NetworkMode": "none",
            "Mounts": [{"Type": "bind", "Source": folder, "Target": "/project", "ReadOnly": True}],
        },
    }
    try:
        cid = await docker.create_container(
            name=f"clonebot-hooks-{secrets.token_hex(4)}", config=config
        )
    except DockerFailed as exc:
        if exc.status == _BAD_BIND:  # no such folder on the Docker host
            return None
        raise
    try:
        found = await docker.read_file(cid, f"/project/{FILE}", limit=MAX_FILE_BYTES)
    finally:
        await docker.remove_container(cid)
    origin = posixpath.join(folder, FILE)
    if found is None:
        return ""
    if found.kind != "file":
        raise BadRequest(f"{origin}: not a regular file (a link or a directory)")
    if found.data is None:
        raise BadRequest(f"{origin}: {found.size} bytes, more than {MAX_FILE_BYTES}")
    try:
        return found.data.decode()
    except UnicodeDecodeError:
        raise BadRequest(f"{origin}: not UTF-8 text") from None


async def run_hooks(
    *,
    docker: DockerClient,
    hooks: list[Hook],
    nodes: list[NodePlan],
    timeout_s: float,
    emit: EventSink,
) -> list[HookRun]:
    """Run each hook in each clone node of its layer, in turn; ``HookFailed`` at the first
    that fails. Layers without nodes here (a refresh's stateless ones) are skipped."""
    runs: list[HookRun] = []
    for hook in hooks:
        for node in sorted((n for n in nodes if n.layer == hook.layer), key=lambda n: n.number):
            async with step(emit, "hooks", node.name):
                run = await _run_one(docker=docker, hook=hook, node=node, timeout_s=timeout_s)
                runs.append(run)
                if run.exit_code != 0:
                    raise HookFailed(summary=summarize(run, timeout_s=timeout_s), runs=runs)
    return runs


async def _run_one(
    *, docker: DockerClient, hook: Hook, node: NodePlan, timeout_s: float
) -> HookRun:
    tail = OutputTail()
    code: int | None = None
    started = time.monotonic()
    # stdin closed: a command that reads it gets nothing, instead of waiting out the timeout
    session = docker.exec_session(node.name, ["sh", "-c", hook.command], stdin=False)
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline, session as running:
            async for chunk in running.chunks():
                tail.feed(chunk)
            code = await running.exit_code()
    except TimeoutError:
        if not deadline.expired():
            raise
        # the command may still run: the rollback removes its container, and it with it
        code = None
    return HookRun(
        layer=hook.layer,
        node=node.name,
        exit_code=code,
        elapsed_ms=int((time.monotonic() - started) * 1000),
        output=tail.masked(values=secret_values(env=node.config.get("Env") or [])),
    )


def summarize(run: HookRun, *, timeout_s: float) -> str:
    """One line a person reads: which hook, how it ended, its last line of output."""
    if run.exit_code is None:
        ended = f"ran past {timeout_s:g} s (CLONEBOT_HOOK_TIMEOUT) in {run.node}"
    else:
        ended = f"exited {run.exit_code} in {run.node}"
    last = next((line for line in reversed(run.output) if line.strip()), "")
    shown = f": {last.strip()[:160]}" if last else " (no output)"
    return f"the on-clone hook of layer {run.layer} {ended}{shown}"


class OutputTail:
    """The last lines of a command's output, in bounded memory whatever it prints."""

    def __init__(self, *, lines: int = TAIL_LINES) -> None:
        self._lines: deque[str] = deque(maxlen=lines)
        self._pending = b""

    def feed(self, data: bytes) -> None:
        *complete, self._pending = (self._pending + data).split(b"\n")
        for line in complete[-(self._lines.maxlen or 1) :]:
            self._lines.append(line[:_KEPT_LINE].decode(errors="replace"))
        self._pending = self._pending[:_KEPT_LINE]

    def masked(self, *, values: Iterable[str] = ()) -> list[str]:
        """The lines with credentials masked (see ``mask_secrets``), each cut to a length."""
        lines = list(self._lines)
        if self._pending:
            lines.append(self._pending.decode(errors="replace"))
        # masked as one text: a secret value may span lines
        text = mask_secrets("\n".join(lines), values=values)
        return [line.rstrip("\r")[:_SHOWN_LINE] for line in text.split("\n")] if lines else []


_SECRET_NAME = re.compile(
    r"PASS|PWD|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|DSN|PRIVATE|SALT|CERT", re.IGNORECASE
)
_SHORTEST_VALUE = 3  # shorter values ("1", "on") would mask half of any output
# any other value this long is masked too (environment values never leave the host); the
# names below hold what a process's own output shows anyway
_SHORTEST_OTHER = 8
_PLAIN_NAMES = frozenset({"PATH", "HOME", "HOSTNAME", "LANG", "LC_ALL", "TERM", "SHELL", "USER"})
_MASKS = [
    # scheme://user:password@host
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):[^\s/@]+@"), r"\1:***@"),
    # password=..., "token": "...", API_KEY: ..., --password=...
    (
        re.compile(
            r"""(?ix)
            ( [\w.-]*? (?:pass(?:w(?:or)?d)?|pwd|secret|token|api[_-]?key|access[_-]?key
                        |private[_-]?key|auth[_-]?key|credential)[\w.-]* ["']? )
            ( \s*[:=]\s* )
            ( "[^"]*" | '[^']*' | [^\s"',;&]+ )
            """
        ),
        r"\1\2***",
    ),
    (re.compile(r"\b[Bb]earer\s+[\w.~+/=-]+"), "Bearer ***"),
    (re.compile(r"\b[Bb]asic\s+[A-Za-z0-9+/=]{8,}"), "Basic ***"),
    # --password VALUE, -p VALUE after a known client, mysql's -pVALUE
    (re.compile(r"(--?(?:password|passwd|pass|pwd|secret|token)\s+)(\S+)"), r"\1***"),
    (re.compile(r"(\bmysql\w*\b[^\n]*?\s-p)(\S+)"), r"\1***"),
    # a DSN's key as its user (https://<key>@sentry.example.com)
    (re.compile(r"(://)([0-9a-fA-F]{16,}|[\w-]{32,})@"), r"\1***@"),
    # what is left of a PEM block (its head may have scrolled out of the kept lines)
    (
        re.compile(r"(?m)^(?=[^\n]*[A-Z])(?=[^\n]*[a-z])(?=[^\n]*[0-9])[A-Za-z0-9+/]{40,}={0,2}$"),
        "***",
    ),
    (re.compile(r"\bxox[a-z]-[\w-]+"), "xox?-***"),
    (re.compile(r"\bxapp-[\w-]+"), "xapp-***"),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "AKIA***"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), "gh?_***"),
    (re.compile(r"\beyJ[\w-]{5,}\.[\w-]{5,}\.[\w-]+"), "***"),  # a JSON web token
    # PostgreSQL names the row a unique or foreign key refused: personal data, often
    (re.compile(r"\b(Key \([^)]*\)=)\(.*?\)( already exists| is not present|$)"), r"\1(***)\2"),
]


def secret_values(*, env: list[str]) -> list[str]:
    """The values of a node's ``NAME=value`` entries to mask in what it prints: those whose
    name says they hold a secret, and any other long enough to be one (a DATABASE_URL)."""
    found = []
    for entry in env:
        name, sep, value = entry.partition("=")
        secret = _SECRET_NAME.search(name) and len(value) >= _SHORTEST_VALUE
        other = name not in _PLAIN_NAMES and len(value) >= _SHORTEST_OTHER
        if sep and (secret or other):
            found.append(value)
    return found


def mask_secrets(text: str, *, values: Iterable[str] = ()) -> str:
    """``text`` with what looks like a credential replaced by ``***``: the given ``values``
    (a node's secret environment values), URLs' passwords, ``password=``/``secret=``/
    ``token=`` style pairs, Slack, AWS, GitHub and bearer tokens, JSON web tokens."""
    for value in sorted(set(values), key=len, reverse=True):  # a longer one may hold a shorter
        text = text.replace(value, "***")
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text
