"""Security basics: no secrets in the repository or the compiled pipeline, no shell built from input, non-root images."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Each pattern is split so that this file does not match itself.
SECRET_PATTERNS = {
    "private key": re.compile("-----BEGIN [A-Z ]*" + "PRIVATE KEY-----"),
    "service-account key": re.compile('"private_key' + r'_id"\s*:\s*"[0-9a-f]{20,}"'),
    "AWS access key": re.compile(r"\b(AKIA|ASIA)" + r"[0-9A-Z]{16}\b"),
    "Google API key": re.compile(r"\bAIza" + r"[0-9A-Za-z_\-]{35}\b"),
    "Google OAuth token": re.compile(r"\bya29\." + r"[0-9A-Za-z_\-]{20,}"),
    "GitHub token": re.compile(r"\bgh[pousr]_" + r"[0-9A-Za-z]{36}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-" + r"[0-9A-Za-z-]{10,}"),
    "password or token assigned": re.compile(
        r"""(?i)\b(password|passwd|secret|api_key|access_token|auth_token)\s*[:=]\s*['"][^'"\s]{8,}['"]"""),
}

# Where the project's own Python lives (tests excluded: they start servers with fixed commands).
SOURCE_DIRS = ("mnistkit", "components", "pipelines", "images")


def find_secrets(text: str) -> list[str]:
    return [kind for kind, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def test_the_scanner_finds_a_planted_secret():
    planted = "key = " + "AKIA" + "ABCDEFGHIJKLMNOP\n" + "-----BEGIN RSA " + "PRIVATE KEY-----\n"
    assert find_secrets(planted) == ["private key", "AWS access key"]
    assert find_secrets('api_key = "' + "s3cr3t-value-1234" + '"') == ["password or token assigned"]


@pytest.mark.checkout
def test_no_secret_in_tracked_files():
    files = tracked_files()
    assert "mnistkit/training.py" in files  # The listing works.
    found = {}
    for name in files:
        path = os.path.join(REPO, name)
        if not os.path.isfile(path) or os.path.getsize(path) > 5_000_000:
            continue
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        kinds = find_secrets(text)
        if kinds:
            found[name] = kinds
    assert not found, f"possible secrets in tracked files: {found}"
    # Credential files have no business in the repository at all.
    assert not [n for n in files if re.search(r"(\.pem|\.p12|\.key|credentials\.json|-sa-key\.json)$", n)]


def test_no_secret_in_the_compiled_pipeline(tmp_path):
    output = tmp_path / "pipeline.yaml"
    result = subprocess.run([sys.executable, "pipelines/compile.py", "--output", str(output)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    text = output.read_text()
    assert "pipelineInfo" in text
    assert find_secrets(text) == []


def python_sources() -> list[str]:
    paths = []
    for directory in SOURCE_DIRS:
        paths += glob.glob(os.path.join(REPO, directory, "**", "*.py"), recursive=True)
    return sorted(paths)


def shell_calls(tree: ast.AST) -> list[str]:
    """Calls that hand a string to a shell: shell=True anywhere, os.system/popen, subprocess.getoutput."""
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                problems.append(f"line {node.lineno}: shell={ast.unparse(keyword.value)}")
        func = ast.unparse(node.func)
        if func in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
                    "commands.getoutput", "os.execl", "os.execlp"):
            problems.append(f"line {node.lineno}: {func}(...)")
    return problems


def test_the_shell_scanner_finds_shell_use():
    tree = ast.parse("import os, subprocess\nsubprocess.run(cmd, shell=True)\nos.system('ls ' + name)\n")
    assert shell_calls(tree) == ["line 2: shell=True", "line 3: os.system(...)"]


def test_no_shell_is_built_from_input():
    sources = python_sources()
    assert any(p.endswith("mnistkit/training.py") for p in sources)
    found = {}
    for path in sources:
        with open(path) as f:
            problems = shell_calls(ast.parse(f.read(), path))
        if problems:
            found[os.path.relpath(path, REPO)] = problems
    assert not found, found


@pytest.mark.parametrize("dockerfile", sorted(glob.glob(os.path.join(REPO, "images", "*", "Dockerfile"))),
                         ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_images_run_as_a_non_root_user(dockerfile):
    users = [line.split()[1] for line in open(dockerfile) if line.strip().upper().startswith("USER ")]
    assert users, f"{dockerfile}: no USER: the image would run as root"
    assert users[-1] not in ("root", "0", "0:0"), f"{dockerfile}: ends as USER {users[-1]}"


def test_there_are_images_to_check():
    assert glob.glob(os.path.join(REPO, "images", "*", "Dockerfile"))
