"""What Slack accepts: methods and arguments from its published Web API spec, Block Kit limits.

The spec is Slack's OpenAPI 2.0 file (version 1.7.0, 2021), kept in spec/ with its MIT licence
(from ../shared/slack/, so that a fresh clone tests against it too).
Block Kit limits are the published ones: https://api.slack.com/reference/block-kit/blocks
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEC = Path(__file__).with_name("spec") / "slack_web_openapi_v2_without_examples.json"

MESSAGE_BLOCKS = 50
VIEW_BLOCKS = 100


@dataclass(frozen=True)
class Method:
    arguments: frozenset[str]
    required: frozenset[str]


# Methods Slack added after the spec was published, allowed by name.
LATER_METHODS = {
    # https://api.slack.com/methods/apps.connections.open (Socket Mode): no arguments
    "apps.connections.open": Method(arguments=frozenset(), required=frozenset()),
}
# bolt's per-request client sends team_id on every call. Slack accepts it on every method and
# ignores it for a workspace token: https://api.slack.com/enterprise/apps/changes-apis
ANY_METHOD_ARGUMENTS = frozenset({"team_id"})


@functools.cache
def spec_methods() -> dict[str, Method]:
    """The spec's methods with their arguments, ``token`` left out (it travels in a header)."""
    paths = json.loads(SPEC.read_text())["paths"]
    methods = {}
    for path, operations in paths.items():
        # a path has one operation (get or post); its parameters are formData, query or header
        parameters = [p for op in operations.values() for p in op.get("parameters", [])]
        names = {p["name"] for p in parameters} - {"token"}
        required = {p["name"] for p in parameters if p.get("required")} - {"token"}
        methods[path.lstrip("/")] = Method(frozenset(names), frozenset(required))
    return methods | LATER_METHODS


def check_arguments(method: str, params: Mapping[str, Any]) -> list[str]:
    """What is wrong with a call's arguments by the spec: missing required, unknown ones."""
    spec = spec_methods().get(method)
    if spec is None:
        return ["unknown method"]
    missing = sorted(spec.required - params.keys())
    unknown = sorted(params.keys() - spec.arguments - ANY_METHOD_ARGUMENTS)
    return [f"missing required argument {name}" for name in missing] + [
        f"unknown argument {name}" for name in unknown
    ]


def check_blocks(blocks: object, *, limit: int = MESSAGE_BLOCKS) -> list[str]:
    """Block Kit problems Slack would refuse a message or view for."""
    if not isinstance(blocks, list) or not all(
        isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks
    ):
        return ["blocks is not a list of objects with a type"]
    problems: list[str] = []
    if len(blocks) > limit:
        problems.append(f"{len(blocks)} blocks, more than {limit}")
    for i, block in enumerate(blocks):
        problems += [f"blocks[{i}] ({block['type']}): {p}" for p in _block_problems(block)]
    return problems


def check_view(view: object) -> list[str]:
    """Problems Slack would refuse a modal or Home tab view for."""
    if not isinstance(view, dict) or view.get("type") not in ("modal", "home"):
        return ["view is not an object of type modal or home"]
    blocks = view.get("blocks")
    problems = check_blocks(blocks, limit=VIEW_BLOCKS)
    problems += _over("private_metadata", view.get("private_metadata"), 3000)
    problems += _over("callback_id", view.get("callback_id"), 255)
    problems += _over("external_id", view.get("external_id"), 255)
    if view["type"] == "modal":
        if not _text(view.get("title")):
            problems.append("a modal needs a title")
        for part in ("title", "submit", "close"):
            problems += _over(part, _text(view.get(part)), 24)
        inputs = [b for b in blocks or [] if isinstance(b, dict) and b.get("type") == "input"]
        if inputs and "submit" not in view:
            problems.append("a modal with input blocks needs a submit button")
    return problems


def _block_problems(block: dict[str, Any]) -> list[str]:
    kind = block["type"]
    problems = _over("block_id", block.get("block_id"), 255)
    if kind == "header":
        problems += _over("text", _text(block.get("text")), 150)
    if kind == "section":
        fields = block.get("fields") or []
        if not _text(block.get("text")) and not fields:
            problems.append("a section needs text or fields")
        problems += _over("text", _text(block.get("text")), 3000)
        if len(fields) > 10:
            problems.append(f"{len(fields)} fields, more than 10")
        for field in fields:
            problems += _over("field", _text(field), 2000)
    elements = block.get("elements") or []
    limit = {"actions": 25, "context": 10}.get(kind, len(elements))
    if len(elements) > limit:
        problems.append(f"{len(elements)} elements, more than {limit}")
    for element in [e for e in elements if isinstance(e, dict)] if kind == "actions" else []:
        problems += _over("action_id", element.get("action_id"), 255)
        problems += _over("value", element.get("value"), 2000)
        problems += _over("button text", _text(element.get("text")), 75)
    return problems


def _text(obj: object) -> str:
    return str(obj.get("text", "")) if isinstance(obj, dict) else ""


def _over(name: str, value: object, limit: int) -> list[str]:
    if isinstance(value, str) and len(value) > limit:
        return [f"{name} is {len(value)} characters, more than {limit}"]
    return []
