"""The version matrix: the test suite on the ends of every dependency range.

    python3 scripts/matrix.py                  # every set, the whole suite; writes scripts/matrix.md
    python3 scripts/matrix.py --set lowest     # one set
    python3 scripts/matrix.py --set lowest --venv-only   # only build .matrix/lowest
    python3 scripts/matrix.py --set lowest -- tests/test_compat.py -x   # pytest arguments

Each set is a Python interpreter and pins of the package's runtime dependencies
(``pyproject.toml`` declares the ranges; ``newest`` pins nothing). A set's
virtualenv is ``.matrix/<set>``, built once and reused; the package is installed
editable with its ``test`` extra. Interpreters are looked up as ``pythonX.Y`` on
the PATH, then under pyenv (``~/.pyenv/versions/X.Y.*``). Standard library only,
so that it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".matrix"
RESULTS = ROOT / "scripts" / "matrix.md"
REPORTED = ("celery", "kombu", "billiard", "redis", "prometheus-client", "structlog", "click")


@dataclass(frozen=True)
class VersionSet:
    name: str
    python: str
    pins: tuple[str, ...] = ()
    why: str = ""
    #: pytest arguments this set adds (a deselection must say why in ``why``).
    pytest_args: tuple[str, ...] = field(default=())


SETS = {
    s.name: s
    for s in (
        VersionSet(
            "lowest",
            "3.10",
            (
                "celery==5.4.0",
                "kombu==5.4.0",
                "redis==5.0.0",
                "prometheus-client==0.20.0",
                "structlog==24.1.0",
                "click==8.1.2",
                "bcrypt==4.0.0",
                "pyyaml==6.0",
                "packaging==23.0",
            ),
            "the lowest release of every declared range, on the lowest Python; the Grafana "
            "SDK needs Python 3.11, so the four tests that run the generator (marker `generator`) "
            "run on the other sets",
            ("-m", "not generator"),
        ),
        VersionSet(
            "middle",
            "3.12",
            (
                "celery==5.5.3",
                "kombu==5.5.4",
                "redis==5.2.1",
                "prometheus-client==0.22.1",
                "structlog==25.1.0",
            ),
            "the last Celery 5.5 with the kombu and redis-py it takes (kombu 5.5's redis "
            "extra caps redis-py below 5.3)",
        ),
        VersionSet("newest", "3.13", (), "the newest release of everything, on the newest Python"),
    )
}


def find_python(version: str) -> str:
    """An interpreter of ``version`` (``3.10``) that runs: under pyenv, else on the PATH.

    pyenv's shims are on the PATH for every version but run only the selected ones,
    so a candidate counts only once it has answered.
    """
    pattern = os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")
    candidates = sorted(glob.glob(pattern), reverse=True)
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        answer = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if answer.returncode == 0 and answer.stdout.startswith(f"Python {version}."):
            return candidate
    raise SystemExit(f"matrix: no Python {version} (looked for {pattern} and python{version})")


def build(version_set: VersionSet) -> Path:
    """The set's virtualenv, with the package and the pins installed; built once."""
    venv = VENVS / version_set.name
    python = venv / "bin" / "python"
    stamp = venv / ".pins"
    wanted = "\n".join(version_set.pins) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        # Reinstall the package itself (editable: cheap) in case its metadata changed.
        _pip(python, "install", "-q", "--no-deps", "-e", str(ROOT))
        return python
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([find_python(version_set.python), "-m", "venv", str(venv)], check=True)
    _pip(python, "install", "-q", "--upgrade", "pip")
    constraints = venv / "constraints.txt"
    constraints.write_text(wanted)
    _pip(python, "install", "-q", "-c", str(constraints), "-e", f"{ROOT}[test]")
    stamp.write_text(wanted)
    return python


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", *args], check=True)


def installed(python: Path) -> dict[str, str]:
    code = f"import importlib.metadata as m\nfor d in {REPORTED!r}:\n    print(d, m.version(d))\n"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    versions = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    version = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {"python": version, **versions}


# pytest's closing line, framed by "=" or (with -q) bare: "1 failed, 204 passed in 814.89s".
_SUMMARY = re.compile(r"^(?:=+ )?(\d+ \w+(?:, \d+ \w+)*) in ([\d.]+)s")


def run(version_set: VersionSet, pytest_args: list[str]) -> dict[str, object]:
    python = build(version_set)
    versions = installed(python)
    log = VENVS / f"{version_set.name}.log"
    started = time.monotonic()
    cmd = [str(python), "-m", "pytest", "-p", "no:cacheprovider", *version_set.pytest_args]
    cmd += pytest_args or ["-q"]
    print(f"== {version_set.name}: {' '.join(cmd)}", flush=True)
    with open(log, "w") as out:
        process = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    result = read_log(version_set, versions, log, process.returncode)
    minutes = (time.monotonic() - started) / 60
    print(f"   {result['summary'] or 'no summary'} ({minutes:.1f} min, exit {process.returncode})")
    return result


def read_log(
    version_set: VersionSet, versions: dict[str, str], log: Path, code: int
) -> dict[str, object]:
    """One set's result, from its pytest log."""
    summary, seconds = "", 0.0
    for line in reversed(log.read_text(errors="replace").splitlines()):
        match = _SUMMARY.match(line)
        if match:
            summary, seconds = match.group(1), float(match.group(2))
            break
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", summary)}
    return {
        "set": version_set,
        "versions": versions,
        "summary": summary,
        "counts": counts,
        "minutes": seconds / 60,
        "code": code,
    }


def table(results: list[dict[str, object]], command: str) -> str:
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    # The matrix's own files do not change what it measured (this table is one of them).
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
         ":!scripts/matrix.md", ":!scripts/matrix.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    lines = [
        "# Version matrix",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')} from git {git}"
        + (" (with uncommitted changes)" if dirty else " (a clean checkout)")
        + ", 2 cores. Each row is the whole test suite in a virtualenv of its own.",
        "",
        "| set | Python | celery | kombu | billiard | redis-py | prometheus_client "
        "| structlog | click | passed | failed | skipped | minutes | why this set |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        v = result["versions"]
        c = result["counts"]
        s = result["set"]
        assert isinstance(v, dict) and isinstance(c, dict) and isinstance(s, VersionSet)
        failed = c.get("failed", 0) + c.get("error", 0) + c.get("errors", 0)
        lines.append(
            f"| {s.name} | {v['python']} | {v['celery']} | {v['kombu']} | {v['billiard']} "
            f"| {v['redis']} | {v['prometheus-client']} | {v['structlog']} | {v['click']} "
            f"| {c.get('passed', 0)} | {failed} | {c.get('skipped', 0)} "
            f"| {result['minutes']:.1f} | {s.why} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in args:
        pytest_args = args[args.index("--") + 1 :]
        args = args[: args.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", choices=sorted(SETS), help="default: all")
    parser.add_argument("--venv-only", action="store_true", help="build the virtualenvs only")
    parser.add_argument("--no-table", action="store_true", help=f"do not write {RESULTS.name}")
    parser.add_argument(
        "--from-logs",
        action="store_true",
        help=f"write {RESULTS.name} from the logs of the last run (.matrix/<set>.log)",
    )
    options = parser.parse_args(args)
    if options.from_logs:
        results = []
        for version_set in SETS.values():
            log = VENVS / f"{version_set.name}.log"
            python = VENVS / version_set.name / "bin" / "python"
            text = log.read_text(errors="replace")
            code = 0 if _SUMMARY.search(text) and " failed" not in text.splitlines()[-1] else 1
            results.append(read_log(version_set, installed(python), log, code))
        RESULTS.write_text(table(results, "python3 scripts/matrix.py"))
        print(f"wrote {RESULTS.relative_to(ROOT)}")
        return 0
    chosen = [SETS[name] for name in (options.set or list(SETS))]
    if options.venv_only:
        for version_set in chosen:
            print(build(version_set))
        return 0
    results = [run(version_set, pytest_args) for version_set in chosen]
    if not options.no_table and not pytest_args and len(chosen) == len(SETS):
        RESULTS.write_text(table(results, "python3 scripts/matrix.py"))
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0 if all(r["code"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
