"""Images carried from one engine to another for a clone made there (no registry, no pull)."""

from __future__ import annotations

from services.docker import DockerClient, gather_all
from services.ledger import Ledger
from services.progress import EventSink, step


async def carry_images(
    source: DockerClient,
    target: DockerClient,
    *,
    images: list[str],
    ledger: Ledger,
    emit: EventSink,
) -> None:
    """``docker save | docker load`` of each image (by ID) the target engine lacks; one
    carried is the job's, removed by its rollback (unless a container uses it by then)."""
    wanted = sorted(set(images))
    present = await gather_all(*(target.inspect_image(ref) for ref in wanted))
    missing = [ref for ref, found in zip(wanted, present, strict=True) if found is None]
    for ref in missing:  # one at a time: each takes the whole bandwidth between the engines
        async with step(emit, "carry", f"image {await _image_name(source, ref)}"):
            ledger.add_image(ref)
            await source.carry_image(ref, to=target)


async def _image_name(docker: DockerClient, ref: str) -> str:
    info = await docker.inspect_image(ref) or {}
    tags = info.get("RepoTags") or []
    return str(tags[0]) if tags else ref.removeprefix("sha256:")[:12]
