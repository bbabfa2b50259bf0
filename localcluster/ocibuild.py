"""Build the chat service and operator images as OCI archives, without Docker.

Machines that build and test this project have no Docker, yet a kubelet node must run its images. This
builds what ``images/<kind>.Dockerfile`` builds: a Debian rootfs made by mmdebstrap stands in for the
python base image, the Dockerfile's builder stage is mirrored in a chroot of that rootfs, and the image
config is read from the Dockerfile itself, so the two cannot drift: an instruction this builder cannot
honour is an error, not a silent difference. The archives load with ``ctr -n k8s.io images import``.

Standard library only, so that it runs with a plain ``python3`` before any venv exists:

    python3 -m localcluster images build chatbot|operator|pause|all [--tag dev] [--out DIR]
    python3 -m localcluster images spec images/chatbot.Dockerfile
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import platform
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

from localcluster import cache, encodings
from localcluster.errors import BuildError
from localcluster.progress import step

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = {"chatbot": IMAGES / "chatbot.Dockerfile", "operator": IMAGES / "operator.Dockerfile"}
PAUSE = IMAGES / "pause"
PAUSE_REFERENCE = "docker.io/kubechat/pause:1"

# What the python base image provides that the Dockerfiles build on.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
BASE_CMD = ("python3",)  # the python image's CMD; an ENTRYPOINT in the Dockerfile resets it
BASE_PACKAGES = ("python3", "ca-certificates", "base-passwd")
# --variant=extract unpacks packages without running their maintainer scripts; these are the two
# postinst steps the images need: the CA bundle (httpx2 verifies with the system store) and the
# system accounts that the Dockerfile's useradd adds to.
BASE_HOOKS = (
    'cat "$1"/usr/share/ca-certificates/mozilla/*.crt > "$1"/etc/ssl/certs/ca-certificates.crt',
    'cp "$1"/usr/share/base-passwd/passwd.master "$1"/etc/passwd',
    'cp "$1"/usr/share/base-passwd/group.master "$1"/etc/group',
)
# Fixed layer mtimes make equal inputs give equal layers; the .pyc files are hash-based, so they stay valid.
MTIME = 946684800  # 2000-01-01T00:00:00Z
PIP_LIB = "/tmp/ocibuild/lib"  # the host's pip, copied into the builder chroot for the build only
PIP_PASS_THROUGH = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT")
PROXIES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class ImageSpec:
    """The image config a Dockerfile's final stage produces (what `docker inspect` would show)."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[str, ...]  # "KEY=VALUE", in the order Docker keeps them
    user: str
    workdir: str
    exposed_ports: tuple[str, ...]  # "8080/tcp"
    labels: dict[str, str]


@dataclass(frozen=True)
class ImageArchive:
    """An OCI image archive on disk and the name containerd gives it on import."""

    path: Path
    reference: str
    spec: ImageSpec


# ---- Dockerfile parsing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Instruction:
    line: int
    keyword: str
    args: str


@dataclass(frozen=True)
class _Copy:
    sources: tuple[str, ...]
    dest: str
    stage: str  # --from=<stage>, "" for the build context


@dataclass
class _Stage:
    """One stage as read so far; the last one is the image."""

    base: str
    name: str
    build_args: Mapping[str, str]
    global_args: Mapping[str, str]
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=lambda: dict(BASE_ENV))
    labels: dict[str, str] = field(default_factory=dict)
    user: str = ""
    workdir: str = ""
    ports: list[str] = field(default_factory=list)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = BASE_CMD
    cmd_set: bool = False
    copies: list[_Copy] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def variables(self) -> dict[str, str]:
        return self.args | self.env  # ENV wins over an ARG of the same name, as in Docker

    def spec(self) -> ImageSpec:
        env = tuple(f"{key}={value}" for key, value in self.env.items())
        ports = tuple(self.ports)
        return ImageSpec(self.entrypoint, self.cmd, env, self.user, self.workdir, ports, dict(self.labels))


def _instructions(text: str) -> list[_Instruction]:
    """Logical lines: `\\` joins lines, comments go (also inside a continuation, as in BuildKit)."""
    found: list[_Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        start = start if pending else number
        if stripped.endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        keyword, _, args = (pending + raw).strip().partition(" ")
        found.append(_Instruction(start, keyword.upper(), args.strip()))
        pending = ""
    if pending:
        raise BuildError("the file ends inside a line continuation")
    return found


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def _words(text: str, variables: Mapping[str, str]) -> list[str]:
    """Split into words as a Dockerfile does: quotes group, `$VAR`/`${VAR}` expand except in '...'."""
    words: list[str] = []
    word: list[str] | None = None
    quote, i = "", 0
    while i < len(text):
        char = text[i]
        if char.isspace() and not quote:
            if word is not None:
                words.append("".join(word))
            word, i = None, i + 1
            continue
        word = [] if word is None else word
        if char == "$" and quote != "'" and (match := _VARIABLE.match(text, i)):
            word.append(_expand(match, variables))
            i = match.end()
            continue
        if char == "\\" and quote != "'" and i + 1 < len(text):
            i += 1
            word.append(text[i])
        elif char in "'\"" and quote in ("", char):
            quote = "" if quote else char
        else:
            word.append(char)
        i += 1
    if quote:
        raise BuildError(f"unterminated {quote} in {text!r}")
    return words if word is None else [*words, "".join(word)]


def _expand(match: re.Match[str], variables: Mapping[str, str]) -> str:
    name = match["plain"] or match["braced"]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise BuildError(f"{match[0]}: only $NAME and ${{NAME}} substitutions are honoured")
    return variables.get(name, "")


def _pairs(args: str, variables: Mapping[str, str]) -> list[tuple[str, str]]:
    pairs = []
    for word in _words(args, variables):
        key, equals, value = word.partition("=")
        if not equals or not key:
            raise BuildError(f"{args!r}: only the KEY=VALUE form is honoured")
        pairs.append((key, value))
    return pairs


def _single(args: str, stage: _Stage) -> str:
    words = _words(args, stage.variables())
    if len(words) != 1:
        raise BuildError(f"{args!r}: expected one value")
    return words[0]


def _exec_form(args: str) -> tuple[str, ...]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(word, str) for word in value):
        raise BuildError(f"{args!r}: only the JSON exec form is honoured (the image has no /bin/sh)")
    return tuple(value)


def _arg(stage: _Stage, args: str) -> None:
    for word in _words(args, stage.variables()):
        name, equals, default = word.partition("=")
        fallback = default if equals else stage.global_args.get(name, "")
        stage.args[name] = stage.build_args.get(name, fallback)


def _env(stage: _Stage, args: str) -> None:
    stage.env.update(_pairs(args, stage.variables()))


def _label(stage: _Stage, args: str) -> None:
    stage.labels.update(_pairs(args, stage.variables()))


def _user(stage: _Stage, args: str) -> None:
    stage.user = _single(args, stage)


def _workdir(stage: _Stage, args: str) -> None:
    stage.workdir = posixpath.normpath(posixpath.join(stage.workdir or "/", _single(args, stage)))


def _expose(stage: _Stage, args: str) -> None:
    for port in _words(args, stage.variables()):
        if not re.fullmatch(r"\d+(/(tcp|udp|sctp))?", port):
            raise BuildError(f"EXPOSE {port}: not a port")
        stage.ports.append(port if "/" in port else f"{port}/tcp")


def _entrypoint(stage: _Stage, args: str) -> None:
    stage.entrypoint = _exec_form(args)
    stage.cmd = stage.cmd if stage.cmd_set else ()


def _cmd(stage: _Stage, args: str) -> None:
    stage.cmd, stage.cmd_set = _exec_form(args), True


def _copy(stage: _Stage, args: str) -> None:
    words = _words(args, stage.variables())
    flags = [word for word in words if word.startswith("--")]
    if [flag for flag in flags if not flag.startswith("--from=")] or len(words) - len(flags) < 2:
        raise BuildError(f"COPY {args}: only COPY [--from=STAGE] SRC... DEST is honoured")
    *sources, dest = words[len(flags) :]
    origin = flags[0].removeprefix("--from=") if flags else ""
    stage.copies.append(_Copy(tuple(sources), dest, origin))


def _run(stage: _Stage, args: str) -> None:
    stage.runs.append(args)


_HANDLERS: dict[str, Callable[[_Stage, str], None]] = {
    "ARG": _arg,
    "ENV": _env,
    "LABEL": _label,
    "USER": _user,
    "WORKDIR": _workdir,
    "EXPOSE": _expose,
    "ENTRYPOINT": _entrypoint,
    "CMD": _cmd,
    "COPY": _copy,
    "RUN": _run,
}


def _stages(text: str, build_args: Mapping[str, str]) -> list[_Stage]:
    global_args: dict[str, str] = {}
    stages: list[_Stage] = []
    for instruction in _instructions(text):
        try:
            _apply(instruction, stages, global_args, build_args)
        except BuildError as error:
            raise BuildError(f"line {instruction.line}: {instruction.keyword}: {error}") from None
    if not stages:
        raise BuildError("no FROM: not a Dockerfile")
    return stages


def _apply(
    instruction: _Instruction,
    stages: list[_Stage],
    global_args: dict[str, str],
    build_args: Mapping[str, str],
) -> None:
    if instruction.keyword == "FROM":
        words = _words(instruction.args, global_args)
        if len(words) not in (1, 3) or words[0].startswith("--") or words[1:2] not in ([], ["AS"], ["as"]):
            raise BuildError("only FROM IMAGE [AS NAME] is honoured")
        stages.append(_Stage(words[0], words[-1] if len(words) == 3 else "", build_args, dict(global_args)))
    elif not stages and instruction.keyword == "ARG":
        scratch = _Stage("", "", build_args, {})
        _arg(scratch, instruction.args)
        global_args.update(scratch.args)
    elif instruction.keyword in _HANDLERS and stages:
        _HANDLERS[instruction.keyword](stages[-1], instruction.args)
    else:
        raise BuildError(
            "not honoured by localcluster/ocibuild.py; teach it or keep it out of the Dockerfile"
        )


def dockerfile_spec(path: Path, build_args: dict[str, str] | None = None) -> ImageSpec:
    """The image config of the Dockerfile's final stage; raises BuildError if the builder could not honour
    the whole file, so that a Dockerfile change cannot silently make the two images differ."""
    return _recipe(path, build_args or {}).spec


# ---- what the builder does for a Dockerfile ----------------------------------------------------------------
# The builder stage's RUN, command by command: what this builder mirrors (the wheel is resolved into a
# wheelhouse first, so that the install itself runs offline).
_BUILDER_COMMANDS = (
    "python -m pip wheel --no-deps --wheel-dir {wheels} .",
    "python -m venv --without-pip {venv}",
    "python -m pip --python {venv}/bin/python install {wheels}/kubechat-*.whl",
)
_ENCODINGS_COPY = "images/tiktoken/"  # the one final-stage COPY from the context: the seeded encodings
_ACCOUNT_OPTIONS = {"--gid": "gid", "--uid": "uid", "--home-dir": "home", "--shell": "shell"}
_ACCOUNT_FLAGS = {"--system", "--no-create-home"}


@dataclass(frozen=True)
class _Recipe:
    spec: ImageSpec
    suite: str  # Debian suite of the python base image
    python: str  # "3.11"
    workdir: str  # the builder's WORKDIR, where its COPYs land
    context: tuple[_Copy, ...]
    wheels: str
    venv: str
    encodings: str  # where the final stage puts images/tiktoken/, "" if it does not
    accounts: tuple[tuple[str, str], ...]  # ("passwd" | "group", line)


def _recipe(path: Path, build_args: Mapping[str, str]) -> _Recipe:
    try:
        stages = _stages(path.read_text(), build_args)
        return _recipe_of(stages)
    except BuildError as error:
        raise BuildError(f"{path}: {error}") from None


def _recipe_of(stages: list[_Stage]) -> _Recipe:
    if len(stages) != 2 or stages[0].base != stages[1].base or not stages[0].name:
        raise BuildError("only a named builder stage and a final stage on the same base are honoured")
    builder, final = stages
    python, suite = _python_base(final.base)
    paths = _builder_paths(builder)
    venv, encodings = _final_copies(final, builder.name, paths["venv"])
    accounts = tuple(line for run in final.runs for line in _accounts(run))
    context = tuple(builder.copies)
    if [copy for copy in context if copy.stage]:
        raise BuildError("the builder stage may COPY only from the build context")
    return _Recipe(
        final.spec(),
        suite,
        python,
        builder.workdir or "/",
        context,
        paths["wheels"],
        venv,
        encodings,
        accounts,
    )


def _python_base(base: str) -> tuple[str, str]:
    match = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(3\.\d+)-slim-([a-z]+)", base)
    if not match:
        raise BuildError(f"FROM {base}: only python:3.X-slim-<debian suite> is honoured")
    return match[1], match[2]


def _commands(run: str) -> list[str]:
    return [" ".join(command.split()) for command in run.split("&&")]


def _builder_paths(builder: _Stage) -> dict[str, str]:
    """Check the builder stage's RUN is the recipe this builder mirrors; return its paths."""
    found: dict[str, str] = {}
    matched = []
    for command in (command for run in builder.runs for command in _commands(run)):
        template, values = _match_command(command)
        if any(found.get(key, value) != value for key, value in values.items()):
            raise BuildError(f"RUN {command!r}: its paths differ from the builder's other commands")
        found |= values
        matched.append(template)
    if sorted(matched) != sorted(_BUILDER_COMMANDS):
        raise BuildError(f"the builder stage must RUN exactly: {' && '.join(_BUILDER_COMMANDS)}")
    return found


def _match_command(command: str) -> tuple[str, dict[str, str]]:
    for template in _BUILDER_COMMANDS:
        pattern = re.escape(template).replace(r"\{wheels\}", "(?P<wheels>/[^ ]+?)")
        match = re.fullmatch(pattern.replace(r"\{venv\}", "(?P<venv>/[^ ]+?)"), command)
        if match:
            return template, match.groupdict()
    raise BuildError(f"RUN {command!r} in the builder stage is not honoured by localcluster/ocibuild.py")


def _final_copies(final: _Stage, builder: str, venv: str) -> tuple[str, str]:
    copied_venv, encodings = "", ""
    for copy in final.copies:
        source = copy.sources[0] if len(copy.sources) == 1 else ""
        if copy.stage == builder and source.rstrip("/") == venv == copy.dest.rstrip("/"):
            copied_venv = venv
        elif not copy.stage and source == _ENCODINGS_COPY:
            encodings = posixpath.join(final.workdir or "/", copy.dest.rstrip("/"))
        else:
            what = " ".join([f"--from={copy.stage}"] * bool(copy.stage) + [*copy.sources, copy.dest])
            raise BuildError(f"COPY {what}: only the builder's venv and {_ENCODINGS_COPY} are honoured")
    if not copied_venv:
        raise BuildError(f"the final stage must COPY --from={builder} {venv} {venv}")
    return copied_venv, encodings


def _accounts(run: str) -> list[tuple[str, str]]:
    """The final stage's RUN, honoured as the /etc/passwd and /etc/group lines groupadd/useradd write."""
    lines = []
    for command in _commands(run):
        program, *words = shlex.split(command)
        options, name = _account_options(words)
        numeric = all(options.get(key, "0").isdigit() for key in ("uid", "gid"))
        if program == "groupadd" and set(options) == {"gid"} and numeric:
            lines.append(("group", f"{name}:x:{options['gid']}:"))
        elif program == "useradd" and set(options) == {"uid", "gid", "home", "shell"} and numeric:
            user = f"{name}:x:{options['uid']}:{options['gid']}::{options['home']}:{options['shell']}"
            lines.append(("passwd", user))
        else:
            raise BuildError(f"RUN {command!r} is not honoured: only groupadd/useradd with numeric ids are")
    return lines


def _account_options(words: list[str]) -> tuple[dict[str, str], str]:
    options: dict[str, str] = {}
    names = []
    pending = iter(words)
    for word in pending:
        if word in _ACCOUNT_OPTIONS:
            options[_ACCOUNT_OPTIONS[word]] = next(pending, "")
        elif word.startswith("-") and word not in _ACCOUNT_FLAGS:
            raise BuildError(f"{word}: an account option localcluster/ocibuild.py does not honour")
        elif not word.startswith("-"):
            names.append(word)
    if len(names) != 1:
        raise BuildError(f"{' '.join(words)!r}: expected one account name")
    return options, names[0]


# ---- caching -----------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Images are slow to build and shared by all checkouts: in the cache, beside the binaries."""
    return cache.cache_dir() / "images"


def _digest(parts: Iterable[str | bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A work folder on the cache's disk (rootfs trees are big), removed afterwards."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=cache_dir()))
    try:
        yield work
    finally:
        shutil.rmtree(work)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _context_files(recipe: _Recipe) -> list[tuple[Path, str]]:
    """(file in the repo, path in the builder) for each file the builder stage COPYs, as BuildKit sends
    them (the .dockerignore drops only __pycache__)."""
    pairs = []
    for copy in recipe.context:
        dest = posixpath.join(recipe.workdir, copy.dest)
        for source in copy.sources:
            origin = REPO / source
            if origin.is_dir():
                pairs += [(f, posixpath.join(dest, f.relative_to(origin).as_posix())) for f in _files(origin)]
            elif origin.is_file():
                pairs.append((origin, posixpath.join(dest, origin.name) if dest.endswith("/") else dest))
            else:
                raise BuildError(f"COPY {source}: no such file in {REPO}")
    return pairs


def _context_digest(recipe: _Recipe) -> str:
    return _digest(part for origin, dest in _context_files(recipe) for part in (dest, origin.read_bytes()))


def _fresh(archive: Path, stamp: Path, key: str) -> bool:
    return archive.is_file() and stamp.is_file() and stamp.read_text() == key


def _cached(archive: ImageArchive, key: str, make_root: Callable[[Path], Path]) -> ImageArchive:
    """Return the archive if it was built from the same inputs; else build it (under the lock)."""
    stamp = archive.path.with_name(archive.path.name + ".inputs")
    if _fresh(archive.path, stamp, key):
        return archive
    with cache.locked():
        if not _fresh(archive.path, stamp, key):
            if os.geteuid() != 0:
                raise BuildError("building images needs root (mmdebstrap --mode=root, unshare, chroot)")
            stamp.unlink(missing_ok=True)
            with _scratch() as work, step(f"building the image {archive.reference}"):
                _write_archive(archive, make_root(work), work)
            stamp.write_text(key)
    return archive


# ---- the rootfs --------------------------------------------------------------------------------------------
def _command(
    argv: Sequence[str], what: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise BuildError(f"{what} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}")
    output: str = done.stdout
    return output


def _base_rootfs(suite: str) -> Path:
    """Debian's python3 and what it needs, unpacked by mmdebstrap: the python:3.X-slim-<suite> stand-in."""
    include = f"--include={','.join(BASE_PACKAGES)}"
    hooks = [f"--extract-hook={hook}" for hook in BASE_HOOKS]  # extract runs no customize hooks
    argv = ["--variant=extract", include, "--mode=root", "--format=tar", *hooks, suite]
    target = cache_dir() / f"base-{suite}-{_digest(argv)[:12]}.tar"
    if not target.is_file():
        mmdebstrap = shutil.which("mmdebstrap")
        if not mmdebstrap:
            raise BuildError("mmdebstrap is missing (apt-get install mmdebstrap)")
        partial = target.with_name(target.name + ".partial")
        with step(f"making the Debian {suite} base of the images (mmdebstrap, from Debian's mirror)"):
            _command([mmdebstrap, *argv, str(partial)], "mmdebstrap")
        partial.rename(target)
    return target


def _unpack(base: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    _command(["tar", "--numeric-owner", "-xpf", str(base), "-C", str(root)], "unpacking the base rootfs")
    return root


def _chroot(root: Path, argv: Sequence[str], *, env: Mapping[str, str], network: bool = False) -> None:
    """Run argv in the rootfs: in a private mount namespace, and without network unless it must download."""
    isolate = ["unshare", "--mount", "--propagation", "private", *([] if network else ["--net"])]
    environ = [f"{key}={value}" for key, value in {**BASE_ENV, "HOME": "/root", **env}.items()]
    _command([*isolate, "env", "-i", *environ, "chroot", str(root), *argv], " ".join(argv[:4]))


def _pip_env(root: Path, network: bool) -> dict[str, str]:
    """pip from PIP_LIB; for downloads, the host's index, proxy and CA settings."""
    env = {"PYTHONPATH": PIP_LIB, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env["PIP_ROOT_USER_ACTION"] = "ignore"
    if network:
        env |= {name: os.environ[name] for name in (*PIP_PASS_THROUGH, *PROXIES) if name in os.environ}
        cert = os.environ.get("PIP_CERT", "")
        if cert and Path(cert).is_file():
            shutil.copyfile(cert, root / "tmp" / "ocibuild" / "ca.pem")
            env["PIP_CERT"] = "/tmp/ocibuild/ca.pem"
    return env


def _stage_pip(root: Path) -> None:
    spec = importlib.util.find_spec("pip")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"{sys.executable} has no pip: the builder runs it inside the chroot")
    target = root / PIP_LIB.lstrip("/") / "pip"
    shutil.copytree(spec.submodule_search_locations[0], target, ignore=shutil.ignore_patterns("__pycache__"))


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _project_wheel(root: Path, recipe: _Recipe) -> str:
    wheels = sorted(_inside(root, recipe.wheels).glob("kubechat-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one kubechat wheel in {recipe.wheels}, found {len(wheels)}")
    return f"{recipe.wheels}/{wheels[0].name}"


def _wheelhouse(recipe: _Recipe, base: Path) -> Path:
    """The project wheel and its dependencies, resolved by the image's own python (markers such as
    python_full_version must see the image's interpreter, not the host's); cached by base and context."""
    target = cache_dir() / f"wheels-{_digest([base.name, _context_digest(recipe)])[:16]}"
    if target.is_dir():
        return target
    with _scratch() as work, step("fetching the images' Python wheels (pip, from the package index)"):
        root = _unpack(base, work / "resolve")
        for origin, dest in _context_files(recipe):
            _inside(root, dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, _inside(root, dest))
        _stage_pip(root)
        env = _pip_env(root, network=True)
        pip = ["python3", "-m", "pip", "wheel", "--wheel-dir", recipe.wheels]
        reproducible = env | {"SOURCE_DATE_EPOCH": str(MTIME)}  # the wheel's zip timestamps
        _chroot(root, [*pip, "--no-deps", recipe.workdir], env=reproducible, network=True)
        _chroot(root, [*pip, _project_wheel(root, recipe)], env=env, network=True)
        shutil.copytree(_inside(root, recipe.wheels), work / "wheels")
        (work / "wheels").rename(target)
    return target


def wheelhouse(kind: str) -> Path:
    """The wheels the image's venv is installed from, for checking what it holds against them."""
    recipe = _recipe(_dockerfile(kind), {})
    with cache.locked():
        return _wheelhouse(recipe, _base_rootfs(recipe.suite))


def _install_venv(builder: Path, recipe: _Recipe, wheels: Path) -> None:
    """The builder stage, offline: a venv without pip, the wheel installed into it from the wheelhouse."""
    if not _inside(builder, f"/usr/bin/python{recipe.python}").exists():
        raise BuildError(f"Debian {recipe.suite}'s python3 is not the Dockerfile's python {recipe.python}")
    shutil.copytree(wheels, _inside(builder, recipe.wheels))
    _stage_pip(builder)
    _chroot(builder, ["python3", "-m", "venv", "--without-pip", recipe.venv], env={})
    install = ["install", "--no-index", "--find-links", recipe.wheels, "--no-compile"]
    python = f"{recipe.venv}/bin/python"
    _chroot(
        builder,
        [python, "-m", "pip", *install, _project_wheel(builder, recipe)],
        env=_pip_env(builder, False),
    )


def _seed_encodings(builder: Path, final: Path, recipe: _Recipe) -> None:
    """The documented `kubechat seed-encodings` step, run by the installed kubechat, then the COPY."""
    source, into = _encodings_source(), builder / "tmp" / "ocibuild" / "tiktoken"
    into.mkdir(parents=True)
    for name in encodings.PINNED:
        shutil.copyfile(source / name, into / name)
    seeded = "/tmp/ocibuild/context/images/tiktoken"
    kubechat = [f"{recipe.venv}/bin/kubechat", "seed-encodings"]
    _chroot(builder, [*kubechat, "--from", "/tmp/ocibuild/tiktoken", "--to", seeded], env={})
    shutil.copytree(_inside(builder, seeded), _inside(final, recipe.encodings))


def _encodings_source() -> Path:
    """The published encoding files (encodings.py: a local copy or the cache): pods may have no way out."""
    return encodings.encodings_dir()


def _add_accounts(root: Path, accounts: Iterable[tuple[str, str]]) -> None:
    for name, line in accounts:
        path = root / "etc" / name
        existing = [entry.split(":") for entry in path.read_text().splitlines()]
        new = line.split(":")
        if [entry for entry in existing if entry[0] == new[0] or entry[2] == new[2]]:
            raise BuildError(f"/etc/{name} already has {new[0]} or id {new[2]}")
        with path.open("a") as file:
            file.write(line + "\n")


def _finish_venv(final: Path, recipe: _Recipe) -> None:
    """Byte-compile what the image's python imports (a read-only root cannot cache .pyc), hash-based so
    that the fixed layer mtimes keep them valid; then hold the Dockerfile's promise of a venv without pip."""
    site = f"{recipe.venv}/lib/python{recipe.python}/site-packages"
    compileall = ["-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash"]
    _chroot(
        final, [f"{recipe.venv}/bin/python", *compileall, f"/usr/lib/python{recipe.python}", site], env={}
    )
    pip = [*_inside(final, recipe.venv).glob("bin/pip*"), *_inside(final, site).glob("pip-*.dist-info")]
    if pip:
        raise BuildError(f"the venv holds pip ({pip[0].name}); the Dockerfile promises it does not")


def _python_root(recipe: _Recipe, work: Path) -> Path:
    base = _base_rootfs(recipe.suite)
    wheels = _wheelhouse(recipe, base)
    builder = _unpack(base, work / "builder")
    _install_venv(builder, recipe, wheels)
    final = _unpack(base, work / "final")
    shutil.copytree(_inside(builder, recipe.venv), _inside(final, recipe.venv), symlinks=True)
    if recipe.encodings:
        _seed_encodings(builder, final, recipe)
    _add_accounts(final, recipe.accounts)
    _finish_venv(final, recipe)
    return final


def _dockerfile(kind: str) -> Path:
    if kind not in DOCKERFILES:
        raise BuildError(f"unknown image {kind!r}: one of {', '.join(DOCKERFILES)}")
    return DOCKERFILES[kind]


def build_image(kind: str, out_dir: Path | None = None, tag: str = "dev") -> ImageArchive:
    """Build (or reuse) `docker.io/kubechat/<kind>:<tag>` from images/<kind>.Dockerfile."""
    dockerfile = _dockerfile(kind)
    recipe = _recipe(dockerfile, {})
    reference = f"docker.io/kubechat/{kind}:{tag}"
    carried = sorted(encodings.PINNED.items()) if recipe.encodings else []  # checked by _encodings_source
    if carried:
        _encodings_source()
    context = _context_digest(recipe)
    files = [part for name, sha256 in carried for part in (name, sha256)]
    key = _digest([reference, dockerfile.read_bytes(), context, *files, Path(__file__).read_bytes()])
    archive = ImageArchive((out_dir or cache_dir()) / f"{kind}-{tag}.oci.tar", reference, recipe.spec)
    return _cached(archive, key, lambda work: _python_root(recipe, work))


# ---- the pause image ---------------------------------------------------------------------------------------
def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError("go is missing from PATH (the pause image is a static Go binary)")
    return go


def _pause_root(work: Path) -> Path:
    root = work / "rootfs"
    root.mkdir()
    env = {**os.environ, "CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": _architecture()}
    env |= {"GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": ""}
    build = [_go(), "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", str(root / "pause"), "."]
    _command(build, "go build (images/pause)", cwd=PAUSE, env=env)
    return root


def build_pause(out_dir: Path | None = None) -> ImageArchive:
    """Build (or reuse) the kubelet's sandbox image: a static binary that waits and reaps zombies."""
    spec = ImageSpec(("/pause",), (), (), "65535:65535", "", (), {})
    sources = [part for f in _files(PAUSE) for part in (f.name, f.read_bytes())]
    key = _digest(
        [PAUSE_REFERENCE, *sources, _command([_go(), "version"], "go version"), Path(__file__).read_bytes()]
    )
    archive = ImageArchive((out_dir or cache_dir()) / "pause-1.oci.tar", PAUSE_REFERENCE, spec)
    return _cached(archive, key, _pause_root)


# ---- the OCI archive ---------------------------------------------------------------------------------------
def _architecture() -> str:
    machine = platform.machine()
    architectures = {"x86_64": "amd64", "aarch64": "arm64"}
    if machine not in architectures:
        raise BuildError(f"no OCI architecture for {machine}")
    return architectures[machine]


def _tree(folder: Path, root: Path) -> Iterator[Path]:
    """Every entry under folder, sorted, parents first; /dev stays empty (runtimes mount their own)."""
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        path = Path(entry.path)
        yield path
        if entry.is_dir(follow_symlinks=False) and path != root / "dev":
            yield from _tree(path, root)


def _write_layer(root: Path, layer: Path) -> str:
    """The rootfs as one uncompressed tar layer, reproducibly (sorted, fixed mtimes); its sha256 digest."""
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in _tree(root, root):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(root).as_posix())
            if info is None:  # a socket: nothing an image can carry
                continue
            info.mtime, info.uname, info.gname = MTIME, "", ""
            if info.isreg():
                with path.open("rb") as file:
                    tar.addfile(info, file)
            else:
                tar.addfile(info)
    with layer.open("rb") as file:
        return "sha256:" + hashlib.file_digest(file, "sha256").hexdigest()


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
        "size": len(blob),
    }


def _image_config(archive: ImageArchive, diff_id: str) -> bytes:
    spec = archive.spec
    config = {
        "Entrypoint": list(spec.entrypoint),
        "Cmd": list(spec.cmd),
        "Env": list(spec.env),
        "User": spec.user,
        "WorkingDir": spec.workdir,
        "ExposedPorts": {port: {} for port in spec.exposed_ports},
        "Labels": spec.labels,
    }
    history = [{"created_by": f"localcluster/ocibuild.py ({archive.reference})"}]
    rootfs = {"type": "layers", "diff_ids": [diff_id]}
    return _json(
        {
            "architecture": _architecture(),
            "os": "linux",
            "config": config,
            "rootfs": rootfs,
            "history": history,
        }
    )


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes | Path) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = MTIME, 0o644
    if isinstance(data, Path):
        info.size = data.stat().st_size
        with data.open("rb") as file:
            tar.addfile(info, file)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _write_archive(archive: ImageArchive, root: Path, work: Path) -> None:
    """An OCI image layout in a tar: oci-layout, index.json naming the image, content-addressed blobs."""
    layer = work / "layer.tar"
    diff_id = _write_layer(root, layer)
    config = _image_config(archive, diff_id)
    layer_descriptor = {"mediaType": OCI_LAYER, "digest": diff_id, "size": layer.stat().st_size}
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config),
            "layers": [layer_descriptor],
        }
    )
    tag = archive.reference.rpartition(":")[2]
    names = {"io.containerd.image.name": archive.reference, "org.opencontainers.image.ref.name": tag}
    entry = _descriptor(OCI_MANIFEST, manifest) | {"annotations": names}
    entry["platform"] = {"architecture": _architecture(), "os": "linux"}
    index = _json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    blobs: dict[str, bytes | Path] = {diff_id: layer}
    blobs |= {"sha256:" + hashlib.sha256(blob).hexdigest(): blob for blob in (config, manifest)}
    partial = archive.path.with_name(archive.path.name + ".partial")
    archive.path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for digest in sorted(blobs):
            _add_bytes(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), blobs[digest])
        _add_bytes(tar, "index.json", index)
        _add_bytes(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    partial.rename(archive.path)


def installed_distributions(archive: Path) -> dict[str, str]:
    """name (PEP 503) → version of every distribution in the image's venv, read from the layer itself."""
    found = {}
    with tarfile.open(archive) as outer:
        index = json.loads(_member(outer, "index.json"))
        manifest = json.loads(_member(outer, _blob_name(index["manifests"][0]["digest"])))
        (layer,) = manifest["layers"]
        with tarfile.open(fileobj=outer.extractfile(_blob_name(layer["digest"])), mode="r|") as tar:
            for member in tar:
                if re.fullmatch(r".+/site-packages/[^/]+\.dist-info/METADATA", member.name):
                    metadata = HeaderParser().parsestr(_member(tar, member).decode())
                    found[re.sub(r"[-_.]+", "-", metadata["Name"]).lower()] = metadata["Version"]
    return found


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _member(tar: tarfile.TarFile, member: str | tarfile.TarInfo) -> bytes:
    file = tar.extractfile(member)
    if file is None:
        raise BuildError(f"{member} is not a file in the archive")
    return file.read()
