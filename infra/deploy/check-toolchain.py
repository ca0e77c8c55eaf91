#!/usr/bin/env python3
"""Checks that the Rust toolchains the project declares can build its locked dependencies.

The required version is the newest `rust-version` among the locked dependencies that are built
for the Linux targets the image and the native stack build for (`cargo metadata --locked
--all-features --filter-platform ...`; packages only for other platforms, e.g. windows-*, or
behind a cfg that is never set, e.g. cfg(loom), are never compiled there). Fails when

  - infra/docker/Dockerfile's `FROM rust:<version>...` is older than that, or is not a version;
  - Cargo.toml's [workspace.package] rust-version is older than that, or missing;
  - a workspace member does not inherit it (`rust-version.workspace = true`), so that cargo
    would not enforce it for that package.

Usage: check-toolchain.py [--all-platforms]   (the latter: every locked package, any platform)
Needs cargo (reads the lock, downloads crate manifests if missing; builds nothing).
"""

import argparse
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGETS = ["x86_64-unknown-linux-gnu", "aarch64-unknown-linux-gnu"]


def version(text):
    """(1, 90, 0) from "1.90", "1.90.1"; None if it is not a version."""
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def show(v):
    return f"{v[0]}.{v[1]}" if v[2] == 0 else f"{v[0]}.{v[1]}.{v[2]}"


def metadata(filter_platforms):
    cmd = ["cargo", "metadata", "--format-version", "1", "--locked", "--all-features"]
    for t in filter_platforms:
        cmd += ["--filter-platform", t]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"FAIL `{' '.join(cmd)}`:\n{out.stderr.strip()}\n"
                 "(Cargo.lock must match the manifests: run cargo without --locked once and"
                 " commit the lock)")
    return json.loads(out.stdout)


def newest_dependency(meta):
    """(version, "name version") of the newest rust-version among the resolved dependencies."""
    resolved = {n["id"] for n in meta["resolve"]["nodes"]}
    members = set(meta["workspace_members"])
    best = None
    for p in meta["packages"]:
        if p["id"] in resolved and p["id"] not in members and p.get("rust_version"):
            v = version(p["rust_version"])
            if v and (best is None or v > best[0]):
                best = (v, f"{p['name']} {p['version']}")
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all-platforms", action="store_true",
                    help="count every locked package, whatever platform it is for")
    args = ap.parse_args()
    failures = []
    print("== toolchain (Cargo.lock, Cargo.toml, infra/docker/Dockerfile)")

    platforms = [] if args.all_platforms else TARGETS
    meta = metadata(platforms)
    need, which = newest_dependency(meta)
    scope = "any platform" if args.all_platforms else ", ".join(TARGETS)
    print(f"  need {show(need)}: newest rust-version among the locked dependencies built for"
          f" {scope} ({which})")
    if not args.all_platforms:
        anywhere = newest_dependency(metadata([]))
        if anywhere[0] > need:
            print(f"       (counting packages for other platforms or cfgs too: {show(anywhere[0])},"
                  f" {anywhere[1]}; never compiled for these targets)")

    manifest = tomllib.loads((REPO / "Cargo.toml").read_text())
    declared_text = ((manifest.get("workspace") or {}).get("package") or {}).get("rust-version")
    declared = version(str(declared_text)) if declared_text else None
    if declared is None:
        failures.append(f"Cargo.toml [workspace.package] rust-version is missing: set"
                        f" rust-version = \"{show(need)}\"")
    elif declared < need:
        failures.append(f"Cargo.toml [workspace.package] rust-version = \"{declared_text}\" is"
                        f" older than {show(need)} ({which}): set rust-version = \"{show(need)}\"")
    else:
        print(f"  ok   Cargo.toml [workspace.package] rust-version = \"{declared_text}\"")

    not_inheriting = []
    for p in meta["packages"]:
        if p["id"] in set(meta["workspace_members"]):
            own = version(p["rust_version"]) if p.get("rust_version") else None
            if own is None:
                not_inheriting.append(str(Path(p["manifest_path"]).relative_to(REPO)))
            elif own < need:
                failures.append(f"{Path(p['manifest_path']).relative_to(REPO)}: rust-version"
                                f" {p['rust_version']} is older than {show(need)}")
    if not_inheriting:
        failures.append("these members declare no rust-version, so cargo enforces none for them;"
                        " add `rust-version.workspace = true` under [package]: "
                        + " ".join(sorted(not_inheriting)))
    else:
        print(f"  ok   all {len(meta['workspace_members'])} workspace members inherit it")

    dockerfile = REPO / "infra" / "docker" / "Dockerfile"
    images = re.findall(r"^FROM\s+(?:--\S+\s+)*(?:docker\.io/)?(?:library/)?rust:(\S+)",
                        dockerfile.read_text(), re.M)
    if not images:
        failures.append(f"{dockerfile.relative_to(REPO)}: no `FROM rust:<version>` stage")
    for tag in images:
        v = version(tag.split("-")[0])
        if v is None:
            failures.append(f"{dockerfile.relative_to(REPO)}: FROM rust:{tag} is not pinned to a"
                            f" version: use rust:{show(need)}-bookworm or newer")
        elif v < need or (declared and v < declared):
            floor = max(need, declared or need)
            failures.append(f"{dockerfile.relative_to(REPO)}: FROM rust:{tag} is older than"
                            f" {show(floor)}: use rust:{show(floor)}-bookworm or newer")
        else:
            print(f"  ok   {dockerfile.relative_to(REPO)}: FROM rust:{tag}")

    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    if rustc:
        print(f"  info local toolchain: {rustc}")
    for f in failures:
        print(f"  FAIL {f}")
    if failures:
        print(f"check-toolchain: {len(failures)} problem(s)")
        return 1
    print("check-toolchain: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
