"""Dockerfile.wideep cannot be built here (no registry); its pins must agree with the configs."""

from __future__ import annotations

import re
import tomllib

from launcher.config.load import load as load_config
from tests.helpers import CONFIGS, REPO


def dockerfile_args() -> dict[str, str]:
    text = (REPO / "Dockerfile.wideep").read_text()
    args: dict[str, str] = {}
    for name, value in re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M):
        assert args.setdefault(name, value) == value, f"ARG {name} declared twice with different values"
    return args


def test_base_image_uses_the_pinned_sglang():
    text = (REPO / "Dockerfile.wideep").read_text()
    froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert froms == ["lmsysorg/sglang:v${SGLANG_VERSION}"]
    assert dockerfile_args()["SGLANG_VERSION"] == "0.5.21"


def test_dockerfile_pins_match_configs_and_pyproject():
    args = dockerfile_args()
    loaded = load_config(CONFIGS / "dsr1-104gpu.yaml", environ={})
    assert loaded.spec.versions.sglang == args["SGLANG_VERSION"]
    assert loaded.spec.versions.dynamo == args["DYNAMO_VERSION"]
    assert args["SGLANG_VERSION"] in loaded.spec.image and args["DYNAMO_VERSION"] in loaded.spec.image
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    local = pyproject["dependency-groups"]["local"]
    assert f"ai-dynamo=={args['DYNAMO_VERSION']}" in local
    assert f"ai-dynamo-runtime=={args['DYNAMO_VERSION']}" in local


def test_every_version_is_pinned():
    for name, value in dockerfile_args().items():
        if name.endswith("_VERSION"):
            assert re.fullmatch(r"\d+\.\d+\.\d+", value), f"{name}={value} is not an exact version"
