#!/usr/bin/env python3
"""Checks a launchd plist the way launchd would read it (no validator runs off macOS):
python3 check_plist.py FILE.plist. Exits 1 naming every problem."""
import plistlib
import sys
from pathlib import Path


def check(path: Path) -> list[str]:
    problems = []
    try:
        with path.open("rb") as f:
            p = plistlib.load(f)
    except Exception as e:  # noqa: BLE001 - any parse failure is the finding
        return [f"not a plist: {e}"]
    label = p.get("Label")
    if not isinstance(label, str) or not label:
        problems.append("Label missing or not a string")
    elif path.name != f"{label}.plist":
        problems.append(f"file name {path.name} does not match Label {label}")
    args = p.get("ProgramArguments")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        problems.append("ProgramArguments must be a non-empty list of strings")
    elif not args[0].startswith("/"):
        problems.append(f"ProgramArguments[0] must be absolute (launchd expands no ~ or $VARS): {args[0]}")
    if p.get("RunAtLoad") is not True:
        problems.append("RunAtLoad must be true")
    if not isinstance(p.get("KeepAlive"), (bool, dict)):
        problems.append("KeepAlive must be a bool or a dict")
    if p.get("ProcessType") not in ("Background", "Standard", "Adaptive", "Interactive"):
        problems.append(f"ProcessType invalid: {p.get('ProcessType')!r}")
    for key in ("StandardOutPath", "StandardErrorPath"):
        v = p.get(key)
        if not isinstance(v, str) or not v.startswith("/"):
            problems.append(f"{key} must be an absolute path: {v!r}")
        elif "~" in v or "$" in v:
            problems.append(f"{key} must not use ~ or $VARS: {v}")
    known = {"Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "ProcessType", "ThrottleInterval",
             "StandardOutPath", "StandardErrorPath", "EnvironmentVariables", "WorkingDirectory"}
    for key in p:
        if key not in known:
            problems.append(f"unexpected key {key}")
    return problems


if __name__ == "__main__":
    bad = False
    for name in sys.argv[1:]:
        for problem in check(Path(name)):
            print(f"{name}: {problem}")
            bad = True
    sys.exit(1 if bad else 0)
