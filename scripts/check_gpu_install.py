"""Check that installing d2pruner into a user's GPU environment leaves their torch and transformers alone.

A GPU user already has a CUDA torch (newer than our floor) and a recent transformers. This script
builds such an environment in a scratch venv -- transformers 5.24.0 really installed, torch 2.14.1
present as installed-package metadata only (downloading a CUDA build of several GB would prove
nothing more to pip's resolver, which reads only the metadata) -- then asks pip what installing
d2pruner would do (``pip install --dry-run --report``, no constraints file, as the README tells a GPU
user) for each extra, and fails if the plan replaces torch or transformers.

Run by .ci/run; exits 1 with the offending plan on failure.

    python scripts/check_gpu_install.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
USER_TORCH = "2.14.1"
USER_TRANSFORMERS = "5.24.0"
TARGETS = [".", ".[eval]", ".[dev,eval]", ".[notebooks]"]
UNTOUCHABLE = {"torch": USER_TORCH, "transformers": USER_TRANSFORMERS}


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def _stub_distribution(site: Path, name: str, version: str) -> None:
    """Installed-package metadata for ``name==version`` (what pip's resolver reads), no code."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "INSTALLER").write_text("d2pruner-check-gpu-install\n")
    (info / "RECORD").write_text("")


def build_user_env(venv: Path) -> Path:
    """A venv holding what a GPU user has: torch 2.14.1 (metadata) and transformers 5.24.0."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = _venv_python(venv)
    _stub_distribution(_site_packages(python), "torch", USER_TORCH)
    # transformers itself does not depend on torch, so this installs no torch next to the stub
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"transformers=={USER_TRANSFORMERS}"], check=True)
    return python


def installed_versions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True)
    return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}


def plan(python: Path, target: str, report: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution ``pip install -e target`` would install or replace."""
    subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "-q", "--disable-pip-version-check",
                    "--report", str(report), "-e", target], check=True, cwd=ROOT)
    data = json.loads(report.read_text())
    return [(item["metadata"]["name"].lower(), item["metadata"]["version"]) for item in data.get("install", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the venv here and keep it (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="d2pruner-gpu-env-") as tmp:
        venv = args.keep or Path(tmp) / "venv"
        python = build_user_env(venv)
        before = installed_versions(python)
        for name, version in UNTOUCHABLE.items():
            if before.get(name) != version:
                print(f"setup failed: the user environment holds {name} {before.get(name)}, expected {version}")
                return 1
        failed = False
        for target in TARGETS:
            steps = plan(python, target, Path(tmp) / "report.json")
            touched = [(n, v) for n, v in steps if n in UNTOUCHABLE]
            shown = ", ".join(f"{n} {v}" for n, v in steps if n != "d2pruner") or "nothing else"
            if touched:
                failed = True
                print(f"FAIL pip install -e '{target}' would replace "
                      + ", ".join(f"{n} {UNTOUCHABLE[n]} by {v}" for n, v in touched))
                print(f"     plan: {shown[:600]}")
            else:
                print(f"ok   pip install -e '{target}' keeps torch {USER_TORCH} and transformers {USER_TRANSFORMERS} "
                      f"(would install d2pruner and {len([s for s in steps if s[0] != 'd2pruner'])} others)")
        after = installed_versions(python)
        if after != before:  # a dry run must change nothing
            print("FAIL the dry runs changed the environment")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
