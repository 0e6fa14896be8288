"""Slack messages: a job's live progress and its result, team notifications, short replies.

Built with slack_sdk's Block Kit models, which check Slack's limits when the caller sends them
(``to_dict()``). Every message has a plain ``text`` beside its blocks: Slack shows it in
notifications, and warns without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    HeaderBlock,
    LinkButtonElement,
    MarkdownTextObject,
    SectionBlock,
)

from bot.progress_view import human
from bot.slack import ids
from services.cloning import CloneResult
from services.job_locks import JobKind
from services.jobs import job_result
from services.schedules import Schedule, ScheduleNotice
from services.settings import SLACK_USER
from services.traffic.routing import site_url
from storage.models import AuditEntry, Job, JobState

SECTION_LIMIT = 3000  # characters of a section's text
RUNNING, DONE = ":hourglass_flowing_sand:", ":white_check_mark:"


@dataclass(frozen=True)
class Message:
    text: str
    blocks: list[Block]

    def to_dict(self) -> dict[str, Any]:
        """The ``text`` and ``blocks`` arguments of chat.postMessage and chat.update."""
        return {"text": self.text, "blocks": [block.to_dict() for block in self.blocks]}


def progress_message(job: Job, *, now: datetime) -> Message:
    """A running job: one line per node with its current step and copy, elapsed, freeze."""
    title = job_title(job)
    lines = _node_lines(job.steps or [], now=now)
    rendered = [line.render() for line in lines]
    if len("\n".join(rendered)) > SECTION_LIMIT:
        # what still runs matters most when not every line fits
        rendered = [r for line, r in zip(lines, rendered, strict=True) if line.running] + [
            r for line, r in zip(lines, rendered, strict=True) if not line.running
        ]
    done = sum(not line.running for line in lines)
    facts = [f"Asked by <@{job.requester}>"]
    if job.state == JobState.QUEUED:  # what it waits for, once a worker has looked at it
        facts.append(job.step or "waiting for a worker")
    elif (since := job.started_at or job.created_at) is not None:
        facts.append(f"{duration(int((now - since).total_seconds() * 1000))} elapsed")
    if lines:
        facts.append(f"{done}/{len(lines)} done")
    if (freeze := _freeze_note(job)) is not None:
        facts.append(freeze)
    blocks: list[Block] = [HeaderBlock(text=title), context_block(" · ".join(facts))]
    if rendered:
        blocks.append(SectionBlock(text=fit(rendered)))
    return Message(text=f"{title}: {done}/{len(lines)} done", blocks=blocks)


def result_message(job: Job, *, base_domain: str, port: int = 80) -> Message:
    """A finished job: what it made and the buttons to use it, or what failed."""
    asked = context_block(f"Asked by <@{job.requester}> · job {job.id}")
    if job.state != JobState.SUCCEEDED:
        failed = HeaderBlock(text=f"{job_title(job)} failed")
        what = SectionBlock(text=":x: " + "\n".join(_failure(job)))
        return Message(text=failure_text(job), blocks=[failed, what, asked])
    summary = success_text(job, base_domain=base_domain, port=port)
    blocks: list[Block] = [HeaderBlock(text=job_title(job, done=True)), SectionBlock(text=summary)]
    if (result := job_result(job)) is not None and (details := _details(result)):
        blocks.append(SectionBlock(text=details))
    blocks.append(asked)
    if buttons := _buttons(job, base_domain=base_domain, port=port):
        blocks.append(ActionsBlock(elements=buttons))
    return Message(text=summary, blocks=blocks)


def job_title(job: Job, *, done: bool = False) -> str:
    """Like "Cloning prod → dev-copy" or "Refreshing dev-copy from prod"; "Cloned …" when done."""
    kind = KINDS.get(job.kind)
    verb = job.kind if kind is None else kind.done if done else kind.doing  # a newer kind, as is
    return f"{verb} {_what(job)}"


def success_text(job: Job, *, base_domain: str, port: int = 80) -> str:
    """What a job that succeeded made, in one sentence."""
    env = result_environment(job)
    if job.kind == "delete":
        return f":wastebasket: *{env}* was deleted."
    result = job_result(job) or CloneResult(job.id, env, job.source or "", job.state)
    took = f"{len(result.nodes)} nodes in {duration(result.elapsed_ms)}"
    link = f"<{env_url(env, base_domain=base_domain, port=port)}|{env}.{base_domain}>"
    if job.kind == "rename":
        return f"{DONE} *{job.environment}* is now *{env}* ({took}), at {link}."
    if job.kind == "stop":
        why = _STOPPED_BECAUSE.get(str(job.params.get("why")), "")
        return f"{DONE} :zzz: *{env}* is stopped{why}."
    if job.kind == "start":
        return f"{DONE} *{env}* is running again at {link} ({took})."
    freeze = job.freeze_ms or result.freeze_ms
    frozen = f"*{job.source}* was frozen {freeze} ms at most" if freeze else "nothing was frozen"
    if job.kind == "refresh":
        return f"{DONE} *{env}* has fresh data from *{job.source}* ({took}); {frozen}."
    if not result.started:
        return f"{DONE} *{env}* was created, not started (a snapshot): {took}; {frozen}."
    return f"{DONE} *{env}* is running at {link}: {took}; {frozen}."


def failure_text(job: Job) -> str:
    error, after = _failure(job)
    return f":x: {job_title(job)} failed: {error}\n{after}"


def _failure(job: Job) -> tuple[str, str]:
    """What failed, and what that left: a failed clone leaves nothing behind."""
    kind = KINDS.get(job.kind)
    after = kind.after_failure.format(env=job.environment) if kind is not None else ""
    return escape(clip(job.error or "unknown error")), after


def clone_started(job: Job) -> Message:
    """Team notifications, here and below: one sentence, then who and which job. (A job's
    are named for clones; a delete or rename job is told with them too.)"""
    return _notice(f"{RUNNING} {job_title(job)}", by=job.requester, job=job.id)


def clone_done(job: Job, *, base_domain: str, port: int = 80) -> Message:
    text = success_text(job, base_domain=base_domain, port=port)
    return _notice(text, by=job.requester, job=job.id)


def clone_failed(job: Job) -> Message:
    return _notice(failure_text(job), by=job.requester, job=job.id)


def extended(name: str, *, until: datetime | None, by: str) -> Message:
    life = f"expires {when(until)}" if until is not None else "never expires"
    return _notice(f":hourglass: *{name}* now {life}", by=by)


def protection(name: str, *, protected: bool, by: str) -> Message:
    if protected:
        return _notice(f":lock: *{name}* is protected: its changes need a second person", by=by)
    return _notice(f":unlock: *{name}* is no longer protected", by=by)


def domains_swapped(a: str, b: str, by: str) -> Message:
    return _notice(f":twisted_rightwards_arrows: *{a}* and *{b}* swapped their domains", by=by)


def split_changed(domain: str, weights: Mapping[str, int], sticky: bool, by: str) -> Message:
    total = sum(weights.values()) or 1
    shares = ", ".join(f"*{env}* {round(100 * w / total)} %" for env, w in weights.items())
    how = "; each visitor stays on one side" if sticky else ""
    return _notice(f":scales: {domain} now splits its traffic: {shares}{how}", by=by)


def failover_set(domain: str, primary: str, backup: str, by: str) -> Message:
    sentence = f":shield: {domain} is served by *{primary}*; *{backup}* takes over if it fails"
    return _notice(sentence, by=by)


def handed_over(name: str, old: str | None, new: str, by: str) -> Message:
    was = f"<@{old}>" if old else "nobody"
    return _notice(f":handshake: *{name}* now belongs to <@{new}> (was {was})", by=by)


def refusal(reason: str) -> str:
    """The ephemeral answer to a request that was refused: nothing was done, and why."""
    return f":no_entry: Nothing was done: {reason}"


def audit_entries(name: str, entries: Sequence[AuditEntry]) -> str:
    """``/env audit``: the latest entries about an environment, newest first, a short line
    each: when (UTC), who, what, and whether it was allowed or why it was refused."""
    if not entries:
        return f"Nothing is recorded about *{escape(name)}* yet."
    lines = [f"*Audit of {escape(name)}*: the last {len(entries)}, newest first"]
    for e in entries:
        when = e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        who = f"<@{e.actor}>" if SLACK_USER.fullmatch(e.actor) else escape(e.actor)
        outcome = "allowed" if e.allowed else f"*refused*: {_mentions(escape(clip(e.reason, 200)))}"
        lines.append(f"`{when}` {who} {escape(e.action)} · {outcome}")
    return fit(lines)


def _mentions(escaped: str) -> str:
    """Escaped text with its user and channel mentions (``<@U…>``, ``<#C…>``) live again:
    a reason names people that way, and nothing but an ID can come back through here."""
    return _ESCAPED_MENTION.sub(r"<\1>", escaped)


_ESCAPED_MENTION = re.compile(r"&lt;([@#][UWCG][A-Z0-9]{2,20})&gt;")


def _notice(sentence: str, *, by: str, job: str | None = None) -> Message:
    who = f"by <@{by}>" + (f" · job {job}" if job else "")
    return Message(text=sentence, blocks=[SectionBlock(text=sentence), context_block(who)])


def result_environment(job: Job) -> str:
    """The environment a finished job leaves: a rename's new name, else the job's."""
    return str((job.params or {}).get("to", job.environment))


def env_url(env: str, *, base_domain: str, port: int = 80) -> str:
    """An environment's own site through the router (``port``: the router's)."""
    return site_url(f"{env}.{base_domain}", port=port)


@dataclass(frozen=True)
class KindWords:
    """How a job of one kind is told: while it runs, once done, and what a failure left."""

    doing: str
    done: str
    after_failure: str  # "{env}": the job's environment


KINDS: dict[str, KindWords] = {
    JobKind.CLONE: KindWords(
        "Cloning", "Cloned", "Nothing was left behind: all the job had created was removed."
    ),
    JobKind.REFRESH: KindWords("Refreshing", "Refreshed", "*{env}* was put back as it was."),
    JobKind.RENAME: KindWords("Renaming", "Renamed", "*{env}* keeps its name."),
    JobKind.DELETE: KindWords(
        "Deleting", "Deleted", "Run `/env delete {env}` again to remove what is left."
    ),
    JobKind.STOP: KindWords(
        "Stopping", "Stopped", "*{env}* may be partly stopped: `/env wake {env}` starts it."
    ),
    JobKind.START: KindWords(
        "Starting", "Started", "*{env}* may be partly started: `/env wake {env}` tries again."
    ),
}
_STOPPED_BECAUSE = {
    "idle": " (asleep: it had no request for a while); a request to it wakes it",
    "expired": " (expired): `/env extend` brings it back, else it is deleted",
    "asked": "; `/env wake` starts it again",
}


def _what(job: Job) -> str:
    if job.kind == "clone":
        across = job.source_engine not in (None, job.engine)
        return f"{job.source} → {job.environment}" + (f" on {job.engine}" if across else "")
    if job.kind == "rename":
        return f"{job.environment} → {result_environment(job)}"
    if job.kind == "refresh" and job.source:
        return f"{job.environment} from {job.source}"
    return job.environment


def _buttons(job: Job, *, base_domain: str, port: int) -> list[ButtonElement | LinkButtonElement]:
    """Swap and split with the source, open, delete: only what makes sense for the result."""
    env = result_environment(job)
    result = job_result(job)
    running = job.kind != "delete" and (result is None or result.started)
    is_clone = job.kind in ("clone", "refresh", "start", "stop") and job.source is not None
    buttons: list[ButtonElement | LinkButtonElement] = []
    if running and is_clone:
        pair = ids.encode_target(ids.Target(env, job.source))
        swap = ConfirmObject(
            title="Swap domains?",
            text=f"Swap the domains of *{env}* and *{job.source}*? Their custom domains are "
            "exchanged in one step.",
            confirm="Swap",
            deny="Cancel",
        )
        buttons.append(
            ButtonElement(
                text="Swap domains", action_id=ids.SWAP, value=pair, style="primary", confirm=swap
            )
        )
        buttons.append(ButtonElement(text="Split traffic…", action_id=ids.SPLIT, value=pair))
    if running:
        url = env_url(env, base_domain=base_domain, port=port)
        buttons.append(LinkButtonElement(text="Open", url=url, action_id=ids.OPEN))
    if is_clone:
        # a snapshot was never started: waking it starts it
        snapshot = job.kind == "clone" and not running
        buttons.append(sleep_button(env) if running else wake_button(env, snapshot=snapshot))
        buttons.append(delete_button(env))
    return buttons


def sleep_button(env: str) -> ButtonElement:
    value = ids.encode_target(ids.Target(env))
    return ButtonElement(text="Sleep", action_id=ids.SLEEP, value=value)


def wake_button(env: str, *, snapshot: bool = False) -> ButtonElement:
    value = ids.encode_target(ids.Target(env))
    text = "Start" if snapshot else "Wake"
    return ButtonElement(text=text, action_id=ids.WAKE, value=value, style="primary")


def delete_button(env: str, *, text: str = "Delete clone") -> ButtonElement:
    confirm = ConfirmObject(
        title="Delete the clone?",
        text=f"Delete *{env}* with its containers, networks and volumes? Its data is lost.",
        confirm="Delete",
        deny="Keep it",
        style="danger",
    )
    value = ids.encode_target(ids.Target(env))
    return ButtonElement(
        text=text, action_id=ids.DELETE, value=value, style="danger", confirm=confirm
    )


def _details(result: CloneResult) -> str:
    """The rewrites, re-mapped ports and warnings of a result, a dozen lines at most."""
    # names and the hosts that changed, never a value: values hold passwords
    lines = [f"• {escape(rw.node)}: `{escape(clip(rw.describe(), 300))}`" for rw in result.rewrites]
    lines += [
        f"• {escape(p.node)}: port {escape(p.container_port)} is on host port {p.new}"
        + (f" (not {p.old})" if p.old else "")
        for p in result.ports
    ]
    lines += [f"• :warning: {escape(clip(w))}" for w in result.warnings]
    return fit(lines, most=12)


@dataclass
class _NodeLine:
    """A node's current step; its copy's figures stay on it through its later steps."""

    node: str | None  # None for a step of the whole job (networks, volumes)
    step: str
    running: bool
    copied: int = 0
    total: int = 0
    copy_ms: int = 0

    def render(self) -> str:
        what = f"`{self.node}` {self.step}" if self.node else self.step
        text = f"{RUNNING if self.running else DONE} {what}"
        if not self.total:
            return text
        copied = min(self.copied, self.total)  # du counts directory blocks too
        text += f" · {human(copied)} / {human(self.total)}"
        if self.copy_ms:
            return text + f" at {human(copied * 1000 // self.copy_ms)}/s"
        return text + f" ({copied * 100 // self.total} %)"


def _node_lines(steps: Sequence[Mapping[str, Any]], *, now: datetime) -> list[_NodeLine]:
    """One line per node (or per step without a node), in the order they first appeared."""
    lines: dict[str, _NodeLine] = {}
    for row in steps:
        if row["step"] in ("freeze", "wait"):  # the source's freeze is shown apart
            continue
        running = row.get("state") != "done"
        node = row.get("node")
        line = lines.setdefault(node or row["step"], _NodeLine(node, row["step"], running))
        if running or not line.running:  # a running step shows over a finished one
            line.step, line.running = row["step"], running
        if row.get("total"):
            line.copied, line.total = row.get("copied", 0), row["total"]
            line.copy_ms = _running_ms(row, now) if running else row.get("ms", 0)
    return list(lines.values())


def _running_ms(row: Mapping[str, Any], now: datetime) -> int:
    """How long a running step has run, for its copy's rate (0 when unknown)."""
    if not row.get("since"):
        return 0
    return max(0, int((now - datetime.fromisoformat(row["since"])).total_seconds() * 1000))


def _freeze_note(job: Job) -> str | None:
    if job.freeze_ms is not None:
        return f"source frozen {job.freeze_ms} ms"
    # another job has the source frozen: freezes of one source come one after another
    waiting = next((r for r in job.steps or [] if r["step"] == "wait"), None)
    if waiting is not None and waiting.get("state") != "done":
        return f"waits for {job.source}'s freeze"
    row = next((r for r in job.steps or [] if r["step"] == "freeze"), None)
    if row is None:
        return None
    if row.get("state") == "done":
        return f"source frozen {row.get('ms', 0)} ms"
    return "source frozen for the final copy"


def fit(lines: Sequence[str], *, limit: int = SECTION_LIMIT, most: int | None = None) -> str:
    """The lines, one per row, cut with "… and N more" before they pass ``limit`` characters
    or ``most`` lines."""
    most = len(lines) if most is None else most
    if len(lines) <= most and len(text := "\n".join(lines)) <= limit:
        return text
    room = limit - len(f"… and {len(lines)} more")
    kept: list[str] = []
    for line in lines[:most]:
        room -= len(line) + 1
        if room < 0:
            break
        kept.append(line)
    return "\n".join([*kept, f"… and {len(lines) - len(kept)} more"])


def escape(text: str) -> str:
    """Text from Docker or a user, shown as it is: Slack reads &, < and > as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, most: int = 500) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def duration(ms: int) -> str:
    """12.3 s, 4 min 5 s, 1 h 2 min."""
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    minutes, seconds = divmod(ms // 1000, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    return f"{minutes // 60} h {minutes % 60} min"


def when(at: datetime) -> str:
    """A date every reader sees in their own time zone (Slack's date token), UTC as fallback."""
    fallback = at.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def lifetime(*, expires_at: datetime | None, stopped: str | None, clone: bool) -> str:
    """`` · expires …``, `` · stopped (expired)``: what a list says of a clone's life."""
    parts = [f"stopped ({stopped})"] if stopped else []
    if expires_at is not None:
        parts.append(f"expires {when(expires_at)}")
    elif clone:
        parts.append("never expires")
    return "".join(f" · {part}" for part in parts)


def context_block(text: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=text)])


def refresh_schedule(name: str, schedule: Schedule | None) -> str:
    """What ``/env schedule`` answers: the clone's refresh schedule and how its last run went."""
    if schedule is None:
        return (
            f"*{name}* is refreshed on no schedule: "
            f"`/env schedule {name} refresh daily 03:00` sets one."
        )
    text = (
        f":calendar: *{name}* is refreshed from its source {schedule.spoken}, in the name of "
        f"<@{schedule.set_by}>; next {when(schedule.next_run)}"
    )
    if schedule.last_run is not None and schedule.last_outcome is not None:
        reason = f": {escape(clip(schedule.last_reason, 300))}" if schedule.last_reason else ""
        text += f"\nLast: {schedule.last_outcome.value} {when(schedule.last_run)}{reason}"
    return text


def refresh_not_run(notice: ScheduleNotice) -> Message:
    """A scheduled refresh skipped (the clone in use) or failed: for its owner and team."""
    env, reason = notice.environment, escape(clip(notice.reason, 500))
    if notice.kind == "skipped":
        text = f":double_vertical_bar: The scheduled refresh of *{env}* was skipped: {reason}."
    else:
        text = f":x: The scheduled refresh of *{env}* failed: {reason}."
    text += f" Next: {when(notice.next_run)}."
    who = f"scheduled by <@{notice.set_by}>" + (f" · job {notice.job}" if notice.job else "")
    return Message(text=text, blocks=[SectionBlock(text=text), context_block(who)])
