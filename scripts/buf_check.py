"""Runs `buf lint` on protos/ and `buf breaking` against a git revision's protos/."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_protos

ROOT = gen_protos.ROOT
BUF = ROOT / "node_modules" / ".bin" / "buf"


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True)


def image_of_revision(rev: str, out: Path) -> Path | None:
    """Builds the image of protos/ as committed at `rev`; None when it has no protos."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "protos"], cwd=ROOT, capture_output=True
    )
    if archive.returncode != 0:
        return None
    src = out.parent / f"src-{rev.replace('/', '_')}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(src, filter="data")
    old_protos, gen_protos.PROTOS = gen_protos.PROTOS, src / "protos"
    try:
        return gen_protos.build_image(out)
    finally:
        gen_protos.PROTOS = old_protos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", default="HEAD", help="git revision for buf breaking")
    parser.add_argument("--protos", type=Path, help="check this protos/ tree instead")
    args = parser.parse_args()
    if args.protos:
        gen_protos.PROTOS = args.protos.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        current = gen_protos.build_image(Path(tmp) / "current.binpb")
        lint = buf("lint", str(current))
        if lint.returncode != 0:
            print("buf lint failed:\n" + lint.stdout + lint.stderr)
            return 1
        print("buf lint: ok")
        baseline = image_of_revision(args.against, Path(tmp) / "baseline.binpb")
        if baseline is None:
            print(f"buf breaking: skipped ({args.against} has no protos/)")
            return 0
        breaking = buf("breaking", str(current), "--against", str(baseline))
        if breaking.returncode != 0:
            print(
                f"buf breaking against {args.against} failed:\n{breaking.stdout}{breaking.stderr}"
            )
            return 1
        print(f"buf breaking against {args.against}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
