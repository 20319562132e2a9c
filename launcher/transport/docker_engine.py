"""The operator's own Docker engine, through the Docker SDK (`docker.from_env()`: $DOCKER_HOST, else the
local socket): where `image build` builds and where `image push` takes the image from."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from launcher.errors import ConfigError, LauncherError

SAVE_CHUNK = 1 << 20


def where() -> str:
    return os.environ.get("DOCKER_HOST") or "the local socket /var/run/docker.sock"


class BuildFailed(LauncherError):
    """The build ran and failed: the error and the build's last lines."""

    def __init__(self, error: str, last: list[str]):
        self.error, self.last = error, last
        super().__init__("\n".join([f"the build failed: {error}", *("  " + line for line in last)]))


@dataclass
class LocalImage:
    ref: str
    id: str
    size: int  # bytes of its layers (its `docker save` stream is about this long)
    tags: list[str]


@dataclass
class BuildContext:
    """The build context exactly as the engine receives it: one tar on disk (closed, it is gone)."""

    archive: IO[bytes]
    dockerfile: str  # the Dockerfile's name inside the archive
    bytes: int
    files: int


def build_context(context: Path, dockerfile: Path) -> BuildContext:
    """The context directory less what its .dockerignore excludes, as `docker build` reads it (the SDK's
    own rules, so that what is measured and shown is what is sent). Without one, everything goes: the
    repository's own .dockerignore keeps .venv, .cache, .git and .env files out. A Dockerfile outside the
    context travels inside the archive under a name of its own (as `docker build -f` does it)."""
    from docker import utils
    from docker.api.build import process_dockerfile

    ignore = context / ".dockerignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    exclude = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    name, inline = process_dockerfile(str(dockerfile), str(context))
    archive = utils.tar(str(context), exclude=exclude, dockerfile=(name, inline))
    with tarfile.open(fileobj=archive, mode="r:") as listing:
        files = sum(1 for member in listing if member.isfile())
    size = archive.seek(0, os.SEEK_END)
    archive.seek(0)
    return BuildContext(archive, name, size, files)


class Engine:
    def __init__(self) -> None:
        import docker  # here, not at the top: other verbs never load the SDK

        try:
            self.client = docker.from_env(timeout=600)
            self.client.ping()
        except Exception as exc:
            raise LauncherError(f"cannot reach the local Docker engine ({where()}): {_short(exc)}") from None

    def image(self, ref: str) -> LocalImage:
        """The image as the engine holds it; bad input (exit 2) when it does not."""
        import docker

        try:
            image = self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            raise ConfigError(
                f"{ref} is not in the local Docker engine ({where()}): build it (launcher image build) "
                f"or pull it (docker pull {ref}) first",
                key="image",
            ) from None
        except Exception as exc:
            raise LauncherError(f"cannot read {ref} from the local Docker engine: {_short(exc)}") from None
        return LocalImage(ref, image.id, int(image.attrs.get("Size") or 0), list(image.tags))

    def save(self, ref: str) -> Iterator[bytes]:
        """The image's `docker save` stream (with its tag), piece by piece: never whole in memory."""
        return self.client.api.get_image(ref, chunk_size=SAVE_CHUNK)

    def build(self, context: BuildContext, tag: str, line: Callable[[str], None]) -> str:
        """Build from `context` (sent as it is), streaming the log to `line`; the new image's ID, or
        BuildFailed with the last lines."""
        last: list[str] = []
        image_id = ""
        stream: Any = self.client.api.build(
            fileobj=context.archive, custom_context=True, dockerfile=context.dockerfile, tag=tag, rm=True,
            forcerm=True, decode=True,
        )  # fmt: skip
        for event in stream:
            if "stream" in event:
                for text in str(event["stream"]).splitlines():
                    if text.strip():
                        last = [*last[-19:], text]
                        line(text)
            if "aux" in event and isinstance(event["aux"], dict) and event["aux"].get("ID"):
                image_id = event["aux"]["ID"]
            if "error" in event:
                raise BuildFailed(str(event["error"]).strip(), last[-10:])
        if not image_id:
            image_id = self.client.images.get(tag).id
        return image_id


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:300]
