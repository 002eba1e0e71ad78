"""Build gradlab's images on a machine without an image registry, reusing them by content.

    python3 scripts/build_images.py [api worker postgres redis pgbouncer] [--json] [--prune]

- The base image (GRADLAB_BASE_IMAGE, default ``gradlab-base:bookworm``) is made once with
  ``debootstrap --variant=minbase`` from this machine's Debian mirror and ``docker import``.
  Where a registry answers, ``GRADLAB_BASE_IMAGE=debian:bookworm-slim`` uses the official one.
- Each image is tagged ``gradlab-<target>:<hash>``, the hash of everything its build reads
  (Dockerfile, .dockerignore, pyproject.toml, README.md, the package folders, or
  ``docker/<service>/``) and its build arguments. A tag that exists is reused, not rebuilt.
- pip inside the build gets this machine's pip settings (CA bundle, https indexes, timeout)
  as BuildKit secrets, so they never reach an image layer.

Prints ``target tag built|reused seconds`` per image, or a JSON object with ``--json``.
Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
APP_TARGETS = ("api", "worker")
SERVICE_TARGETS = ("postgres", "redis", "pgbouncer")
DEFAULT_BASE_IMAGE = "gradlab-base:bookworm"
LOG_DIR = REPO / "runs" / "image-builds"
HASH_TAG = re.compile(r"^[0-9a-f]{12}$")
# BuildKit's cache (the dependency layers a code change reuses, pip's downloads) is trimmed to
# this after a build, least recently used first: enough for the worker's PyTorch layers.
BUILD_CACHE_KEEP = os.environ.get("GRADLAB_BUILD_CACHE_KEEP", "12GB")


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=False, **kwargs)


# ---- docker ---------------------------------------------------------------------------------


def buildkit_command() -> tuple[list[str], dict[str, str]]:
    """A docker build command line that uses BuildKit (secrets and cache mounts need it).

    ``docker buildx`` where installed; otherwise a classic (< 23) docker CLI such as Debian's
    docker.io 20.10, which has BuildKit built in. A newer CLI without buildx cannot.
    """
    candidates = [shutil.which("docker"), "/usr/bin/docker"]
    for docker in dict.fromkeys(c for c in candidates if c and os.access(c, os.X_OK)):
        if run([docker, "buildx", "version"]).returncode == 0:
            return [docker, "buildx", "build", "--load"], {}
        version = re.search(r"version (\d+)\.", run([docker, "--version"]).stdout)
        if version and int(version.group(1)) < 23:
            return [docker, "build"], {"DOCKER_BUILDKIT": "1"}
    raise SystemExit(
        "no docker CLI that builds with BuildKit: install docker-buildx, or Debian's docker.io "
        "(its 20.10 CLI has BuildKit built in)"
    )


def image_exists(name: str) -> bool:
    return run(["docker", "image", "inspect", name]).returncode == 0


def remove_stale_tags(repository: str, keep: str) -> None:
    """Delete the other content-hash tags of ``repository`` (images in use stay)."""
    listing = run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", repository])
    for name in listing.stdout.split():
        tag = name.rsplit(":", 1)[1]
        if name != keep and HASH_TAG.match(tag):
            run(["docker", "rmi", name])


# ---- base image -----------------------------------------------------------------------------


def debian_mirrors() -> tuple[str, str]:
    """(archive, security) URLs of the machine's apt sources, Debian's own by default."""
    archive, security = "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        urls = re.findall(r"^URIs:\s*(\S+)", text, re.M)
        urls += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
        for url in urls:
            if "debian-security" in url:
                security = url
            elif url.rstrip("/").endswith("/debian"):
                archive = url
    return archive, security


def build_base_image(name: str) -> None:
    """debootstrap a minimal Debian (the tag names the suite) and import it as ``name``."""
    suite = name.rsplit(":", 1)[1] if ":" in name else "bookworm"
    if shutil.which("debootstrap") is None:
        raise SystemExit(f"{name} is missing and debootstrap is not installed (apt-get install "
                         "debootstrap), or set GRADLAB_BASE_IMAGE to an image you can pull")
    archive, security = debian_mirrors()
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="gradlab-base-") as tmp:
        root = Path(tmp) / "rootfs"
        step = run(["debootstrap", "--variant=minbase", suite, str(root), archive])
        if step.returncode != 0:
            raise SystemExit(f"debootstrap failed:\n{step.stdout[-3000:]}{step.stderr[-3000:]}")
        (root / "etc/apt/sources.list").write_text(
            f"deb {archive} {suite} main\ndeb {archive} {suite}-updates main\n"
            f"deb {security} {suite}-security main\n"
        )
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "--change", 'CMD ["/bin/bash"]', "-", name],
            stdin=tar.stdout, capture_output=True, text=True, check=False,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise SystemExit(f"docker import of {name} failed: {imported.stderr}")


def ensure_base_image(name: str) -> None:
    if name.startswith("gradlab-base:") and not image_exists(name):
        build_base_image(name)


# ---- inputs and their hash ------------------------------------------------------------------


def package_folders() -> list[str]:
    """The folders pyproject.toml installs as gradlab.<folder>."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return sorted(set(pyproject["tool"]["setuptools"]["package-dir"].values()))


def input_files(target: str) -> list[Path]:
    if target in SERVICE_TARGETS:
        roots = [REPO / "docker" / target]
    else:
        roots = [REPO / name for name in ("Dockerfile", ".dockerignore", "pyproject.toml",
                                          "README.md", "docker/requirements.py")]
        roots += [REPO / folder for folder in package_folders()]
    files: list[Path] = []
    for root in roots:
        found = [root] if root.is_file() else sorted(root.rglob("*"))
        files += [p for p in found if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix != ".pyc"]
    return files


def content_hash(target: str, build_args: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps([target, sorted(build_args.items())]).encode())
    for path in input_files(target):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:12]


# ---- pip settings as build secrets ----------------------------------------------------------


def pip_settings() -> dict[str, str]:
    """This machine's effective pip settings (files and PIP_* variables), key -> value."""
    listing = run([sys.executable, "-m", "pip", "config", "list"])
    settings: dict[str, str] = {}
    for line in listing.stdout.splitlines():
        match = re.match(r"^[^.]*\.([a-z-]+)='(.*)'$", line.strip())
        if match:
            settings[match.group(1)] = match.group(2)
    return settings


def pip_secrets(workdir: Path) -> list[str]:
    """``--secret`` options: pip.conf (https indexes, timeout, cert path) and the CA bundle.

    Local (file://) indexes and find-links are left out: the build cannot see them.
    """
    settings = pip_settings()
    lines = ["[global]"]
    for key in ("index-url", "extra-index-url"):
        urls = [u for u in settings.get(key, "").split() if u.startswith(("http://", "https://"))]
        if urls:
            lines.append(f"{key} = {' '.join(urls)}")
    timeout = settings.get("timeout") or settings.get("default-timeout")
    if timeout:
        lines.append(f"timeout = {timeout}")
    options: list[str] = []
    ca = settings.get("cert") or os.environ.get("SSL_CERT_FILE")
    ca_path = Path(ca) if ca else Path("/etc/ssl/certs/ca-certificates.crt")
    if ca_path.is_file():
        lines.append("cert = /run/secrets/pip_ca")
        options += ["--secret", f"id=pip_ca,src={ca_path}"]
    conf = workdir / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    return options + ["--secret", f"id=pip_conf,src={conf}"]


# ---- building -------------------------------------------------------------------------------


def build_args(target: str, base_image: str, torch_variant: str) -> dict[str, str]:
    args = {"BASE_IMAGE": base_image}
    if target in APP_TARGETS:
        args["VERSION"] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
            "version"]
    if target == "worker":
        args["TORCH_VARIANT"] = torch_variant
    return args


def build(target: str, tag: str, args: dict[str, str]) -> None:
    command, env = buildkit_command()
    if target in SERVICE_TARGETS:
        context, dockerfile = REPO / "docker" / target, REPO / "docker" / target / "Dockerfile"
    else:
        context, dockerfile = REPO, REPO / "Dockerfile"
        command = [*command, "--target", target]
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{target}.log"
    with tempfile.TemporaryDirectory(prefix="gradlab-build-") as tmp:
        argv = [*command, "--file", str(dockerfile), "--tag", tag, "--progress", "plain"]
        argv += [f"--build-arg={key}={value}" for key, value in args.items()]
        argv += ["--label", f"org.gradlab.inputs={tag.rsplit(':', 1)[1]}"]
        argv += [*pip_secrets(Path(tmp)), str(context)]
        with log_path.open("w") as log:
            done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise SystemExit(f"building {tag} failed (log: {log_path}):\n{tail}")


def ensure_image(target: str, base_image: str, torch_variant: str,
                 prune: bool) -> dict[str, object]:
    args = build_args(target, base_image, torch_variant)
    tag = f"gradlab-{target}:{content_hash(target, args)}"
    started = time.monotonic()
    reused = image_exists(tag)
    if not reused:
        build(target, tag, args)
    if prune:
        remove_stale_tags(f"gradlab-{target}", keep=tag)
    size = run(["docker", "image", "inspect", "--format", "{{.Size}}", tag]).stdout.strip()
    return {"target": target, "image": tag, "built": not reused,
            "seconds": round(time.monotonic() - started, 1), "bytes": int(size or 0)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ", ".join([*APP_TARGETS, *SERVICE_TARGETS])
    parser.add_argument("targets", nargs="*", help=f"{names} (default: all)")
    parser.add_argument("--base-image",
                        default=os.environ.get("GRADLAB_BASE_IMAGE", DEFAULT_BASE_IMAGE))
    parser.add_argument("--torch-variant", choices=["cuda", "cpu"],
                        default=os.environ.get("GRADLAB_TORCH_VARIANT", "cuda"))
    parser.add_argument("--prune", action="store_true",
                        help="remove this image's other content-hash tags")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="one JSON object")
    output.add_argument("--env", action="store_true",
                        help="`export GRADLAB_<TARGET>_IMAGE=...` lines for docker-compose.yml")
    args = parser.parse_args(argv)
    targets = list(dict.fromkeys(args.targets or [*APP_TARGETS, *SERVICE_TARGETS]))
    unknown = sorted(set(targets) - {*APP_TARGETS, *SERVICE_TARGETS})
    if unknown:
        parser.error(f"unknown image(s) {unknown}: choose from {names}")
    if run(["docker", "info"]).returncode != 0:
        raise SystemExit("docker is not running (start dockerd, or `make services-docker`)")
    started = time.monotonic()
    ensure_base_image(args.base_image)
    images = [ensure_image(t, args.base_image, args.torch_variant, args.prune)
              for t in targets]
    if any(image["built"] for image in images):
        run(["docker", "builder", "prune", "--force", "--keep-storage", BUILD_CACHE_KEEP])
    if args.env:
        for image in images:
            print(f"export GRADLAB_{str(image['target']).upper()}_IMAGE={image['image']}")
    elif args.json:
        print(json.dumps({"images": images, "base_image": args.base_image,
                          "seconds": round(time.monotonic() - started, 1)}))
    else:
        for image in images:
            print(f"{image['target']:8} {image['image']:32} "
                  f"{'built' if image['built'] else 'reused':6} {image['seconds']:8.1f} s "
                  f"{int(image['bytes']) / 1e6:9.1f} MB")


if __name__ == "__main__":
    main()
