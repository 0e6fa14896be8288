"""The slash commands: ``/clone`` and ``/env …``.

Each is acknowledged at once, empty; the work runs after the ack and answers the user alone
(``respond``, ephemeral). Jobs get their progress message in the channel; changes of traffic
and ownership are told to the team.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.models.views import View

from bot.slack import messages
from bot.slack.bot import Respond, SlackBot, Usage, slack_request
from bot.slack.messages import escape
from bot.slack.modals import open_then_fill
from bot.slack.payloads import read_command
from bot.slack.views import CLONE_TITLE, clone_modal
from services import approvals, audit, catalog, expiry, jobs, ownership, schedules
from services.access import Request
from services.errors import BadRequest, EnvironmentNotFound
from services.settings import Settings
from services.traffic import domain_https, routing
from services.traffic.router import swap_routes
from storage.models import Certificate

_USER = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>|([UW][A-Z0-9]{2,20})")
_CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|[^>]*)?>|([CG][A-Z0-9]{2,20})")


@dataclass(frozen=True)
class Asked:
    """One slash command: who, where, the words after the command, the delivery's trigger."""

    user: str
    channel: str | None
    words: list[str]
    trigger_id: str | None

    @property
    def request(self) -> Request:
        return slack_request(self.user, self.channel, self.trigger_id)


Handler = Callable[[SlackBot, Asked], Awaitable[str | None]]


def register(app: AsyncApp, bot: SlackBot) -> None:
    @app.command("/clone")
    async def clone(ack: AsyncAck, command: dict[str, Any], respond: Respond) -> None:
        await ack()
        await bot.answer(respond, _clone_asked(bot, command, respond))

    @app.command("/env")
    async def env(ack: AsyncAck, command: dict[str, Any], respond: Respond) -> None:
        await ack()
        bot.after_ack(respond, lambda: _env(bot, _asked(command)))


def _asked(command: dict[str, Any]) -> Asked:
    """The command's checked fields (``Unreadable`` when they are not Slack's)."""
    checked = read_command(command)
    return Asked(
        user=checked.user_id,
        channel=checked.channel_id,
        words=checked.text.split(),
        trigger_id=checked.trigger_id,
    )


async def _clone_asked(bot: SlackBot, command: dict[str, Any], respond: Respond) -> None:
    asked = _asked(command)
    if not asked.words:  # a form, opened at once: its trigger lasts three seconds
        await open_clone_modal(bot, asked)
        return
    bot.after_ack(respond, lambda: _clone(bot, asked))


async def _clone(bot: SlackBot, asked: Asked) -> str | None:
    """``/clone SOURCE [NAME] [--ttl D] [--snapshot] [--on ENGINE]``."""
    args = _clone_words(asked.words)
    source, name = args.words[0], (args.words[1] if len(args.words) == 2 else None)
    job = await jobs.submit_clone(
        bot.svc, asked.request, source=source, name=name, snapshot=args.snapshot, ttl=args.ttl,
        on=args.on,
    )  # fmt: skip
    bot.jobs.start(job, channel=asked.channel or asked.user)
    return None


class CloneArgs(NamedTuple):
    words: list[str]  # the source, and the name if given
    ttl: str | None
    snapshot: bool
    on: str | None  # the engine


def _clone_words(given: list[str]) -> CloneArgs:
    """The source and name, the ``--ttl``, ``--on`` and whether ``--snapshot``, wherever
    they stand."""
    words: list[str] = []
    options: dict[str, str | None] = {"--ttl": None, "--on": None}
    snapshot = False
    rest = iter(given)
    for word in rest:
        option, equals, value = word.partition("=")
        if word == "--snapshot":
            snapshot = True
        elif option in options:
            options[option] = value if equals else next(rest, "")
        elif word.startswith("-"):
            raise Usage(usage("/clone"))
        else:
            words.append(word)
    if not 1 <= len(words) <= 2 or "" in options.values():
        raise Usage(usage("/clone"))
    return CloneArgs(words, options["--ttl"], snapshot, options["--on"])


async def open_clone_modal(bot: SlackBot, asked: Asked) -> None:
    """The /clone form, offering the environments the user may clone: opened at once, its
    trigger lasting 3 s, then filled (``bot.slack.modals``)."""
    await open_then_fill(
        bot.client,
        trigger_id=asked.trigger_id or "",
        title=CLONE_TITLE,
        fill=lambda: _clone_form(bot, asked),
    )


async def _clone_form(bot: SlackBot, asked: Asked) -> View:
    views = await catalog.visible_environments(bot.svc, user=asked.user, channel=asked.channel)
    # the user's own environments first, and originals before their clones
    mine = sorted(
        (v for v in views if v.may_clone),
        key=lambda v: (v.owner != asked.user, v.cloned_from is not None, v.name),
    )
    sources = [v.name for v in mine]
    default = await catalog.suggest_clone_name(bot.svc, source=sources[0]) if sources else ""
    return clone_modal(sources, default_name=default, channel=asked.channel)


async def _env(bot: SlackBot, asked: Asked) -> str | None:
    if not asked.words:
        return usage("")
    name, args = asked.words[0], asked.words[1:]
    if (sub := ENV.get(name)) is None:
        return f"`{escape(name[:40])}` is not an /env command: `/env help` lists them."
    if len(args) not in sub.takes:
        raise Usage(usage(name))
    if sub.repeat is Repeat.IGNORE and not await bot.first_delivery(asked.trigger_id):
        return None  # Slack delivered this command again: it was acted on the first time
    return await sub.handler(bot, Asked(asked.user, asked.channel, args, asked.trigger_id))


async def _list(bot: SlackBot, asked: Asked) -> str:
    views = await catalog.visible_environments(bot.svc, user=asked.user, channel=asked.channel)
    if not views:
        return "You may see no environment yet. `/env help` lists the commands."
    lines = [f"*Environments you may see* ({len(views)})"]
    several = len(bot.svc.fleet.names) > 1  # then each says its engine
    for v in views:
        owner = f"<@{v.owner}>" if v.owner else "nobody"
        origin = f", cloned from {v.cloned_from}" if v.cloned_from else ""
        running = sum(n.state == "running" for n in v.env.nodes)
        state = "*down*" if v.down else f"{running}/{len(v.env.nodes)} nodes running"
        if v.unreachable:
            state = f"*unreachable* (engine {v.engine} does not answer)"
        elif several:
            state += f" on {v.engine}"
        domains = f" · {', '.join(v.domains)}" if v.domains else ""
        life = messages.lifetime(
            expires_at=v.expires_at, stopped=v.stopped, clone=v.cloned_from is not None
        )
        kind = ", Swarm stack" if v.env.kind == "stack" else ""
        lines.append(
            f"• *{v.name}* ({v.role}{origin}{kind}) · {state} · owner {owner}{domains}{life}"
        )
    return messages.fit(lines)


def _site(bot: SlackBot, env: str) -> str:
    return messages.env_url(env, base_domain=bot.base_domain, port=bot.svc.settings.router_port)


async def _info(bot: SlackBot, asked: Asked) -> str:
    name = asked.words[0]
    views = await catalog.visible_environments(bot.svc, user=asked.user, channel=asked.channel)
    view = next((v for v in views if v.name == name), None)
    if view is None:
        raise EnvironmentNotFound(name)
    env = view.env
    lines = [
        f"*{env.name}* · owner {f'<@{view.owner}>' if view.owner else 'nobody'} · you: {view.role}"
        f" · engine {env.engine}" + (" · a Swarm stack" if env.kind == "stack" else ""),
        f"<{_site(bot, env.name)}|{env.name}.{bot.base_domain}>",
    ]
    if view.unreachable:
        lines.append(f":warning: engine {env.engine} does not answer: {escape(view.unreachable)}")
    if view.cloned_from:
        life = messages.lifetime(expires_at=view.expires_at, stopped=view.stopped, clone=True)
        lines.append(f"Cloned from *{view.cloned_from}*{life}")
    for layer in env.layers:
        nodes = ", ".join(f"`{escape(n.name)}` {n.state}" for n in layer.nodes)
        lines.append(f"• layer *{layer.name}* ({layer.scaling}): {nodes}")
    if view.domains:
        lines.append("Domains: " + ", ".join(view.domains))
    for route in view.routes:
        if route.kind == "failover":
            lines.append(f"↪ {route.domain}: {route.primary}, failing over to {route.secondary}")
        else:
            sticky = ", sticky" if route.sticky else ""
            lines.append(
                f"↪ {route.domain}: {route.primary} {route.weight} %, "
                f"{route.secondary} {100 - route.weight} %{sticky}"
            )
    if view.notify_channel:
        lines.append(f"Notifications go to <#{view.notify_channel}>")
    return messages.fit(lines)


async def _delete(bot: SlackBot, asked: Asked) -> None:
    await start_delete(bot, asked.request, name=asked.words[0], channel=asked.channel)


async def start_delete(bot: SlackBot, request: Request, *, name: str, channel: str | None) -> None:
    """A delete job, followed like a clone: its end is told to the team ("was deleted")."""
    job = await jobs.submit_delete(bot.svc, request, name=name, force=False)
    bot.jobs.start(job, channel=channel or request.user)


async def _sleep(bot: SlackBot, asked: Asked) -> None:
    request, channel = asked.request, asked.channel
    await start_power(bot, request, name=asked.words[0], wake=False, channel=channel)


async def _wake(bot: SlackBot, asked: Asked) -> None:
    request, channel = asked.request, asked.channel
    await start_power(bot, request, name=asked.words[0], wake=True, channel=channel)


async def start_power(
    bot: SlackBot, request: Request, *, name: str, wake: bool, channel: str | None
) -> None:
    """A job stopping a clone (it sleeps until woken) or starting it, followed like a clone."""
    if wake:
        job = await jobs.submit_start(bot.svc, request, name=name)
    else:
        job = await jobs.submit_stop(bot.svc, request, name=name)
    bot.jobs.start(job, channel=channel or request.user)


async def _extend(bot: SlackBot, asked: Asked) -> str:
    name, by = asked.words
    return await extend(bot, asked.request, name=name, by=by)


async def extend(bot: SlackBot, request: Request, *, name: str, by: str) -> str:
    """Put a clone's expiry later; one its expiry stopped starts again (a job, followed)."""
    extended = await expiry.extend_environment(bot.svc, request, name=name, by=by)
    if extended.start is not None:
        bot.jobs.start(extended.start, channel=request.channel or request.user)
    note = messages.extended(name, until=extended.expires_at, by=request.user)
    await bot.notices.send(note, about=(name,))
    return note.text


async def _protect(bot: SlackBot, asked: Asked) -> str:
    name = asked.words[0]
    await approvals.set_protected(bot.svc, asked.request, name=name, protected=True)
    note = messages.protection(name, protected=True, by=asked.user)
    await bot.notices.send(note, about=(name,))
    return note.text


async def _unprotect(bot: SlackBot, asked: Asked) -> str:
    name = asked.words[0]  # a change that waits for a second person's approval itself
    await approvals.set_protected(bot.svc, asked.request, name=name, protected=False)
    note = messages.protection(name, protected=False, by=asked.user)
    await bot.notices.send(note, about=(name,))
    return note.text


async def _rename(bot: SlackBot, asked: Asked) -> None:
    name, new_name = asked.words
    job = await jobs.submit_rename(bot.svc, asked.request, name=name, new_name=new_name)
    bot.jobs.start(job, channel=asked.channel or asked.user)


async def _refresh(bot: SlackBot, asked: Asked) -> None:
    job = await jobs.submit_refresh(bot.svc, asked.request, name=asked.words[0])
    bot.jobs.start(job, channel=asked.channel or asked.user)


async def _share(bot: SlackBot, asked: Asked) -> str:
    name, who, role = asked.words
    user = _user(who)
    await ownership.share_environment(bot.svc, asked.request, name=name, user=user, role=role)
    return f"<@{user}> is now {role} of *{name}*."


async def _owner(bot: SlackBot, asked: Asked) -> str:
    name, who = asked.words
    new_owner = _user(who)
    previous = await ownership.hand_over_environment(
        bot.svc, asked.request, name=name, new_owner=new_owner
    )
    note = messages.handed_over(name, previous, new_owner, by=asked.user)
    await bot.notices.send(note, about=(name,))
    return f"*{name}* now belongs to <@{new_owner}>."


async def _adopt(bot: SlackBot, asked: Asked) -> str:
    name, who = asked.words
    owner = _user(who)
    await ownership.adopt_environment(bot.svc, asked.request, name=name, owner=owner)
    await bot.notices.send(messages.handed_over(name, None, owner, by=asked.user), about=(name,))
    return f"*{name}* now belongs to <@{owner}>."


async def _domain(bot: SlackBot, asked: Asked) -> str:
    if asked.words[0] == "https":
        return await _domain_https(bot, asked)
    if len(asked.words) != 3:
        raise Usage(usage("domain"))
    what, name, domain = asked.words
    if what == "add":
        bound = await routing.add_domain(bot.svc, asked.request, env=name, domain=domain)
        await bot.apply_routes(bindings_only=True)
        return f"{bound} now leads to *{name}*."
    if what == "remove":
        unbound = await routing.remove_domain(bot.svc, asked.request, env=name, domain=domain)
        await bot.apply_routes(bindings_only=True)
        return f"{unbound} no longer leads to *{name}*."
    raise Usage(usage("domain"))


async def _domain_https(bot: SlackBot, asked: Asked) -> str:
    """``/env domain https DOMAIN [redirect|no-redirect] [hsts|no-hsts|hsts=SECONDS]``."""
    _, domain, *rest = asked.words
    if not rest:
        return _https_text(await domain_https.get_https(bot.svc, asked.request, domain=domain))
    redirect, hsts, max_age = _https_words(rest)
    state = await domain_https.set_https(
        bot.svc, asked.request, domain=domain, redirect=redirect, hsts=hsts, hsts_max_age=max_age
    )
    return _https_text(state)


def _https_words(words: list[str]) -> tuple[bool | None, bool | None, int | None]:
    """``redirect``/``no-redirect``, ``hsts``/``no-hsts``/``hsts=SECONDS``, at most one of each."""
    redirect: bool | None = None
    hsts: bool | None = None
    max_age: int | None = None
    for word in words:
        if word in ("redirect", "no-redirect") and redirect is None:
            redirect = word == "redirect"
        elif word in ("hsts", "no-hsts") and hsts is None:
            hsts = word == "hsts"
        elif word.startswith("hsts=") and hsts is None:
            max_age = domain_https.parse_max_age(word.removeprefix("hsts="))
            if max_age is None:  # ASCII digits alone: "²".isdigit(), and int() refuses it
                raise Usage(
                    f"`{escape(word)}`: the HSTS max-age is whole seconds, like hsts=31536000. "
                    + usage("domain")
                )
            hsts = True
        else:
            raise Usage(usage("domain"))
    return redirect, hsts, max_age


def _https_text(state: domain_https.HttpsState) -> str:
    hsts = "off" if state.hsts_max_age is None else f"`max-age={state.hsts_max_age}`"
    text = (
        f"*{escape(state.domain)}*: redirect to HTTPS {'on' if state.redirect else 'off'}"
        f" · HSTS {hsts}"
    )
    if state.in_effect is None:
        return f"{text}. The router does not run: in effect when it starts."
    if not state.in_effect:
        return (
            f"{text}. Kept until {escape(state.domain)} is bound to an environment and HTTPS "
            "serves its own certificate."
        )
    return f"{text}."


async def _swap(bot: SlackBot, asked: Asked) -> str:
    first, second = asked.words
    return await swap(bot, asked.request, first, second)


async def swap(bot: SlackBot, request: Request, first: str, second: str) -> str:
    """Swapped and applied in one step (``router.swap_routes``: once swapped, an HAProxy that
    cannot be told is logged and left to the router keeper), then the team told."""
    await swap_routes(bot.svc, request, first=first, second=second)
    note = messages.domains_swapped(first, second, by=request.user)
    await bot.notices.send(note, about=(first, second))
    return note.text


async def traffic_changed(bot: SlackBot, note: messages.Message, *, about: tuple[str, ...]) -> None:
    """HAProxy told at once, then the team."""
    await bot.apply_routes()
    await bot.notices.send(note, about=about)


async def _split(bot: SlackBot, asked: Asked) -> str:
    domain, *rest = asked.words
    sticky = bool(rest) and rest[-1] == "sticky"
    weights = routing.parse_weights(rest[:-1] if sticky else rest)
    return await split(bot, asked.request, domain=domain, weights=weights, sticky=sticky)


async def split(
    bot: SlackBot, request: Request, *, domain: str, weights: dict[str, int], sticky: bool
) -> str:
    await routing.set_split(bot.svc, request, domain=domain, weights=weights, sticky=sticky)
    note = messages.split_changed(domain, weights, sticky, by=request.user)
    await traffic_changed(bot, note, about=tuple(weights))
    return note.text


async def _failover(bot: SlackBot, asked: Asked) -> str:
    domain, primary, backup = asked.words
    return await failover(bot, asked.request, domain=domain, primary=primary, backup=backup)


async def failover(
    bot: SlackBot, request: Request, *, domain: str, primary: str, backup: str
) -> str:
    await routing.set_failover(bot.svc, request, domain=domain, primary=primary, backup=backup)
    note = messages.failover_set(domain, primary, backup, by=request.user)
    await traffic_changed(bot, note, about=(primary, backup))
    return note.text


async def _notify(bot: SlackBot, asked: Asked) -> str:
    name, where = asked.words
    channel = _channel(where)
    await ownership.set_notify_channel(bot.svc, asked.request, name=name, channel=channel)
    return f"Notifications about *{name}* now go to <#{channel}>."


async def _audit(bot: SlackBot, asked: Asked) -> str:
    name = asked.words[0]
    entries = await audit.recent_entries(bot.svc, asked.request, name=name)
    return messages.audit_entries(name, entries)


async def _schedule(bot: SlackBot, asked: Asked) -> str:
    """``/env schedule CLONE`` shows it; ``off`` removes it; ``refresh daily HH:MM [ZONE]`` or
    ``refresh weekly DAY HH:MM [ZONE]`` sets it (UTC unless a zone is named)."""
    name, *rest = asked.words
    svc, request = bot.svc, asked.request
    if not rest:
        return messages.refresh_schedule(
            name, await schedules.get_schedule(svc, request, name=name)
        )
    if rest == ["off"]:
        removed = await schedules.remove_schedule(svc, request, name=name)
        return f"*{name}* is refreshed on no schedule{' now' if removed else ''}."
    if rest[0] != "refresh":
        raise Usage(usage("schedule"))
    cron, zone = schedules.cron_of_words(rest[1:])
    found = await schedules.set_schedule(svc, request, name=name, cron=cron, timezone=zone)
    return messages.refresh_schedule(name, found)


async def _cert(bot: SlackBot, asked: Asked) -> str:
    """``/env cert DOMAIN``: its certificate as anyone who may view its environment sees it."""
    from services.traffic.certificates import get_certificate  # to move up with the imports

    found = await get_certificate(bot.svc, asked.request, domain=asked.words[0])
    https = await domain_https.get_https(bot.svc, asked.request, domain=found.domain)
    return "\n".join(
        [
            f"*{escape(found.domain)}* · expires {found.not_after:%Y-%m-%d %H:%M} UTC",
            f"subject: {escape(found.subject)}",
            f"issuer: {escape(found.issuer)}",
            f"serial: `{found.serial}` · SHA-256 `{found.fingerprint}`",
            _whence(found, bot.svc.settings),
            _https_text(https),
        ]
    )


def _whence(found: Certificate, settings: Settings) -> str:
    """Who added a certificate; for one from ACME, when `serve` renews it, or why it does not."""
    from services.traffic.renewals import renewal_state  # to move up with the imports

    if (state := renewal_state(found, settings)) is None:
        return f"added by <@{found.added_by}> on {found.added_at:%Y-%m-%d}"
    issued = f"issued by ACME for <@{found.added_by}>, last on {found.added_at:%Y-%m-%d}"
    if state.next_at is None:
        return f"{issued}; not renewed: {escape(state.not_renewed or 'stopped')}"
    failed = f" (after {state.failures} failed renewal(s))" if state.failures else ""
    return f"{issued}; renewed from {state.next_at:%Y-%m-%d}{failed}"


async def _help(bot: SlackBot, asked: Asked) -> str:
    return usage("")


def _user(word: str) -> str:
    if (match := _USER.fullmatch(word)) is None:
        raise BadRequest(f"{word!r} is not a Slack user: mention them, like @someone")
    return match.group(1) or match.group(2)


def _channel(word: str) -> str:
    if (match := _CHANNEL.fullmatch(word)) is None:
        raise BadRequest(f"{word!r} is not a channel: name it, like #team")
    return match.group(1) or match.group(2)


class Repeat(Enum):
    """What a second delivery of the same command (Slack retries) does."""

    ANSWER = "answer"  # it changes nothing: answered again
    JOB = "job"  # the job's own key finds the job the first delivery started
    IGNORE = "ignore"  # it changed something: acted on once, later deliveries ignored


@dataclass(frozen=True)
class Subcommand:
    """One ``/env`` subcommand, in one place: its words, what it does, how many words it
    takes, its handler, and what a repeated delivery does."""

    words: str
    does: str
    takes: tuple[int, ...]
    handler: Handler
    repeat: Repeat = Repeat.IGNORE

    def usage(self, name: str) -> str:
        return f"`/env {name}{' ' if self.words else ''}{self.words}`: {self.does}"


ENV: dict[str, Subcommand] = {
    "list": Subcommand("", "the environments you may see", (0,), _list, Repeat.ANSWER),
    "info": Subcommand(
        "ENV", "its layers, nodes, domains, routes and people", (1,), _info, Repeat.ANSWER
    ),
    "audit": Subcommand("ENV", "its last 20 audit entries", (1,), _audit, Repeat.ANSWER),
    "delete": Subcommand("ENV", "delete a clone", (1,), _delete, Repeat.JOB),
    "rename": Subcommand(
        "ENV NEW-NAME", "a new name and internal domain", (2,), _rename, Repeat.JOB
    ),
    "refresh": Subcommand("CLONE", "copy its source's data again", (1,), _refresh, Repeat.JOB),
    "share": Subcommand(
        "ENV @someone viewer|operator", "let someone see it, or move its traffic", (3,), _share
    ),
    "owner": Subcommand("ENV @someone", "hand it over", (2,), _owner),
    "adopt": Subcommand(
        "ENV @someone", "give an environment nobody owns an owner (admins)", (2,), _adopt
    ),
    "domain": Subcommand(
        "add|remove ENV DOMAIN · https DOMAIN [redirect|no-redirect] [hsts|no-hsts|hsts=SECONDS]",
        "bind or unbind a custom domain; show or set its redirect to HTTPS and HSTS",
        (2, 3, 4),
        _domain,
    ),
    "swap": Subcommand("ENV OTHER", "exchange their custom domains", (2,), _swap),
    "split": Subcommand(
        "DOMAIN ENV=90 OTHER=10 [sticky]", "share a domain's traffic by weight", (3, 4), _split
    ),
    "failover": Subcommand(
        "DOMAIN PRIMARY BACKUP", "BACKUP serves when PRIMARY fails", (3,), _failover
    ),
    "notify": Subcommand("ENV #channel", "where its team notifications go", (2,), _notify),
    "extend": Subcommand(
        "CLONE 3d|never", "put its expiry later (never: the source's owner, admins)", (2,), _extend
    ),
    "sleep": Subcommand("CLONE", "stop it until woken", (1,), _sleep, Repeat.JOB),
    "protect": Subcommand(
        "ENV",
        "its swaps, splits, deletes, renames… need a second person's approval",
        (1,),
        _protect,
    ),
    "unprotect": Subcommand("ENV", "take that off (approved by a second person)", (1,), _unprotect),
    "wake": Subcommand("CLONE", "start it again", (1,), _wake, Repeat.JOB),
    "schedule": Subcommand(
        "CLONE [off|refresh daily HH:MM|refresh weekly mon HH:MM] [ZONE]",
        "show, set or remove its scheduled refresh (UTC unless a zone is named)",
        (1, 2, 4, 5, 6),
        _schedule,
    ),
    "cert": Subcommand(
        "DOMAIN", "its TLS certificate: subject, issuer, serial, expiry", (1,), _cert, Repeat.ANSWER
    ),
    "help": Subcommand("", "this list", tuple(range(100)), _help, Repeat.ANSWER),
}
CLONE_USAGE = (
    "`/clone SOURCE [NAME] [--ttl 3d] [--snapshot] [--on ENGINE]` clones SOURCE now (it "
    "expires after --ttl, else the default; it is made on the source's engine, or --on's); "
    "`/clone` alone opens a form"
)


def usage(command: str) -> str:
    """How to use ``/clone``, one ``/env`` subcommand, or (for anything else) all of ``/env``."""
    if command == "/clone":
        return f"Usage: {CLONE_USAGE}"
    if (sub := ENV.get(command)) is not None:
        return f"Usage: {sub.usage(command)} (`/env help` lists every command)"
    return "\n".join(["*/env* commands:", *(s.usage(n) for n, s in ENV.items()), CLONE_USAGE])
