"""Dockerfile and .dockerignore. No Docker engine runs here, so the image cannot be built in the tests: hadolint
lints the file, and a small parser checks what the issue asks of the image (multi-stage, CUDA runtime base with a
CPU build arg, pinned installs, no build tools in the final stage, non-root, healthcheck on /readyz, the default
checkpoint inside) and that the build context keeps exactly what the image needs."""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field

import pytest

from tests.deploy.conftest import REPO, SETTINGS, require_binary, run_tool

DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for instr, args in self.instructions if instr == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Handles comments and backslash line continuations."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(" ".join((current + line).split()))
        current = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instr, _, args = line.partition(" ")
        instr, args = instr.upper(), args.strip()
        if instr == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.IGNORECASE)
            stages.append(Stage(image=m.group(1), name=m.group(2)))
        elif not stages:
            assert instr == "ARG", f"only ARG may come before the first FROM, got {instr}"
            name, _, default = args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((instr, args))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES}
FINAL = STAGES[-1]


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image)


def lineage(stage: Stage, build_args: dict[str, str] | None = None) -> list[Stage]:
    """The stage and the stages it is built FROM, down to the one on an external image."""
    args = dict(GLOBAL_ARGS, **(build_args or {}))
    chain = [stage]
    while (parent := resolve(chain[-1].image, args)) in BY_NAME:
        chain.append(BY_NAME[parent])
    return chain


def test_hadolint_passes():
    hadolint = require_binary("hadolint")
    result = run_tool([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_an_unpinned_install(tmp_path):
    hadolint = require_binary("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nRUN apt-get update && apt-get install -y python3\nRUN pip install fastapi\n")
    result = run_tool([hadolint, "--no-color", str(bad)])
    assert result.returncode != 0 and "DL3008" in result.stdout and "DL3013" in result.stdout


def test_parser_on_a_small_dockerfile():
    args, stages = parse_dockerfile(
        "ARG A=x\n# c\nFROM img:${A} AS one\nRUN a \\\n  # inner\n  && b\nFROM one\nUSER 1\n"
    )
    assert args == {"A": "x"} and [s.name for s in stages] == ["one", None]
    assert stages[0].all("RUN") == ["a && b"] and stages[1].all("USER") == ["1"]


def test_multi_stage_with_a_cuda_runtime_base_and_a_cpu_build_arg():
    assert len(STAGES) >= 3 and FINAL.name == "runtime"
    assert "builder" in BY_NAME and any("--from=builder" in c for c in FINAL.all("COPY"))
    assert GLOBAL_ARGS["DEVICE"] == "gpu"
    # DEVICE picks the OS stage: gpu -> the CUDA runtime image, cpu -> plain Ubuntu; both pinned by tag.
    for device, expected in (("gpu", "nvidia/cuda:"), ("cpu", "ubuntu:")):
        chain = lineage(FINAL, {"DEVICE": device})
        base = resolve(chain[-1].image, GLOBAL_ARGS)
        assert chain[-1].name == f"os-{device}"
        assert base.startswith(expected), (device, base)
        assert ":" in base and not base.endswith(":latest")
        if device == "gpu":
            assert "-runtime-" in base and "devel" not in base
    # builder and final stage share the OS stage, so the virtual environment's interpreter path is valid.
    assert lineage(BY_NAME["builder"])[1:] == lineage(FINAL)[1:]


def test_installs_are_pinned():
    for stage in STAGES:
        for run in stage.all("RUN"):
            for packages in re.findall(r"apt-get install ([^&;]+)", run):
                for pkg in (p for p in packages.split() if not p.startswith("-")):
                    assert re.fullmatch(r"[\w.+-]+=[\w.*+~:-]+", pkg), f"unpinned apt package {pkg!r}"
            for packages in re.findall(r"pip install ([^&;]+)", run):
                for pkg in (p for p in shlex.split(packages) if not p.startswith(("-", "$", '"'))):
                    if pkg in (".", "https://pypi.org/simple") or pkg.startswith("http"):
                        continue
                    assert re.fullmatch(r"[\w.-]+==[\w.+]+", pkg), f"unpinned pip package {pkg!r}"
    # `pip install .` takes pyproject.toml's runtime dependencies: all exact pins.
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all(re.fullmatch(r"[\w.\[\]-]+==[\w.]+", d) for d in deps), [d for d in deps if "==" not in d]


def test_final_image_has_no_build_tools_and_installs_nothing():
    final_runs = " ".join(FINAL.all("RUN"))
    assert "pip install" not in final_runs and "apt-get install" not in final_runs
    builder_runs = " ".join(BY_NAME["builder"].all("RUN"))
    assert re.search(r"pip uninstall -y\b.*\bpip\b", builder_runs), "pip should not reach the final image"
    all_runs = " ".join(r for s in STAGES for r in s.all("RUN"))
    for tool in ("build-essential", "gcc", "g++", "git", "curl", "python3-dev", "-devel"):
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", all_runs.replace("python3-venv", "")), tool
    os_stage = lineage(FINAL)[1]
    assert any("rm -rf /var/lib/apt/lists/*" in r for r in os_stage.all("RUN"))


def test_runs_as_non_root_with_a_healthcheck_on_readyz():
    (user,) = FINAL.all("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert any(re.search(r"useradd .*--uid 10001", r) for r in FINAL.all("RUN"))
    (health,) = FINAL.all("HEALTHCHECK")
    # healthy = every model loaded and warmed up, not merely a live process
    assert "/readyz" in health and "/healthz" not in health and "NORMGATE_PORT" in health and "CMD" in health
    (cmd,) = FINAL.all("CMD")
    assert cmd == '["python", "-m", "service"]'
    assert FINAL.all("EXPOSE") == ["8000"]


def test_environment_uses_core_settings_and_the_shipped_checkpoint():
    env = {}
    for line in FINAL.all("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    normgate = {k for k in env if k.startswith("NORMGATE_")}
    assert normgate <= SETTINGS, normgate - SETTINGS
    assert env["NORMGATE_HOST"] == "0.0.0.0" and env["NORMGATE_PORT"] == "8000"
    assert env["NORMGATE_MODELS_DIR"] == "/app/models/checkpoints"
    # the one writable folder for state (the result outbox), created for user 10001
    assert env["NORMGATE_STATE_DIR"] == "/state"
    assert any("/state" in r and "chown normgate:normgate" in r for r in FINAL.all("RUN"))
    # models/ (with checkpoints/default, see .dockerignore) and service/ land in the working directory.
    assert FINAL.all("WORKDIR") == ["/app"]
    copies = FINAL.all("COPY")
    assert "models/ /app/models/" in copies and "service/ /app/service/" in copies
    # Caches are redirected to /tmp: the root filesystem is read-only in Kubernetes and compose.
    assert env["MPLCONFIGDIR"].startswith("/tmp") and env["XDG_CACHE_HOME"].startswith("/tmp")


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path (or one of its parent folders) decides; '!' re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = fnmatch.translate(pat).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*", ".*")  # '**' spans folders
        if any(re.match(regex, c) for c in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path, excluded",
    [
        ("models/checkpoints/default/model.json", False),
        ("models/checkpoints/default/model.safetensors", False),
        ("models/checkpoints/effnet/model.safetensors", True),
        ("models/architectures.py", False),
        ("service/app.py", False),
        ("pyproject.toml", False),
        ("README.md", False),
        (".venv/bin/python", True),
        (".git/config", True),
        ("tests/deploy/test_dockerfile.py", True),
        ("service/__pycache__/app.cpython-312.pyc", True),
        ("data/object-cxr/train.csv", True),
    ],
)
def test_dockerignore_keeps_what_the_image_needs(path: str, excluded: bool):
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert dockerignore_excludes(path, patterns) is excluded


def test_the_copied_sources_exist():
    for source in ("pyproject.toml", "README.md", "models", "service", "service/__main__.py"):
        assert (REPO / source).exists(), source
