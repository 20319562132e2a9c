"""The operator's own Docker engine, through the Docker SDK (`docker.from_env()`: $DOCKER_HOST, else the
local socket): where `image build` builds and where `image push` takes the image from."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def build(self, context: Path, dockerfile: Path, tag: str, line: Callable[[str], None]) -> str:
        """Build, streaming the log to `line`; the new image's ID, or BuildFailed with the last lines."""
        last: list[str] = []
        image_id = ""
        stream: Any = self.client.api.build(
            path=str(context), dockerfile=str(dockerfile), tag=tag, rm=True, forcerm=True, decode=True
        )
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
