"""Regenerates the Python code for protos/ into libs/common/src (or checks it is fresh)."""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "libs" / "common" / "src"
# buf.validate ships no .proto in any registry package we can install; its descriptor
# (taken from the protovalidate 1.2.0 sdist's generated module) stands in for the source.
VALIDATE_SET = PROTOS / "third_party" / "buf" / "validate" / "validate.binpb"
# Generated trees we own, relative to OUT. Everything else under OUT is hand-written.
GENERATED = ("visionmesh/api", "buf/validate")
# The KServe proto keeps Triton's wire names (package `inference`), so its Python code
# would clash in the default descriptor pool with tritonclient's copy; the inference
# service serves KServe with tritonclient's generated classes and a contract test
# checks that both define the same wire format. We only lint and check it.
SKIP_PYTHON = ("inference/",)


def _include_dirs() -> list[str]:
    import grpc_tools
    from google.api import annotations_pb2  # googleapis-common-protos ships the .protos

    googleapis = Path(annotations_pb2.__file__).resolve().parent.parent.parent
    return [str(PROTOS), str(googleapis), str(Path(grpc_tools.__file__).parent / "_proto")]


def proto_files() -> list[str]:
    files = sorted(
        str(p.relative_to(PROTOS))
        for p in PROTOS.rglob("*.proto")
        if p.relative_to(PROTOS).parts[0] != "third_party"
    )
    return files


def protoc(args: list[str]) -> None:
    from grpc_tools import protoc as grpc_protoc

    argv = ["protoc", *(f"-I{d}" for d in _include_dirs())]
    argv += [f"--descriptor_set_in={VALIDATE_SET}", *args]
    if grpc_protoc.main(argv) != 0:
        raise SystemExit(f"protoc failed: {' '.join(argv)}")


def build_image(out: Path) -> Path:
    """Writes a buf image (FileDescriptorSet with imports and source info) of protos/."""
    protoc(
        [
            f"--descriptor_set_out={out}",
            "--include_imports",
            "--include_source_info",
            *proto_files(),
        ]
    )
    return out


_IMPORT = re.compile(r"^(from|import) visionmesh\.(?!api\.)", re.MULTILINE)


def _rewrite(path: Path) -> None:
    text = path.read_text()
    # protoc writes imports from the proto path (visionmesh.common.v1); our Python
    # package keeps generated code under visionmesh.api so it cannot collide with the
    # hand-written visionmesh.<service> packages.
    # Only import statements move: names inside strings (method paths such as
    # '/visionmesh.gateway.v1.AuthService/SignUp') are the wire contract.
    text = _IMPORT.sub(lambda m: f"{m.group(1)} visionmesh.api.", text)
    # The module name message classes report (pickling, repr) must be the real one.
    text = re.sub(
        r"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'visionmesh\.(?!api\.)",
        r"\1'visionmesh.api.",
        text,
    )
    path.write_text(text)


def generate(dest: Path) -> None:
    work = dest / "_raw"
    work.mkdir(parents=True)
    files = [f for f in proto_files() if not f.startswith(SKIP_PYTHON)]
    protoc(
        [
            f"--python_out={work}",
            f"--pyi_out={work}",
            f"--grpc_python_out={work}",
            *files,
            "buf/validate/validate.proto",
        ]
    )
    shutil.move(str(work / "visionmesh"), str(dest / "visionmesh" / "api"))
    shutil.move(str(work / "buf"), str(dest / "buf"))
    shutil.rmtree(work)
    for py in sorted(dest.rglob("*.py*")):
        _rewrite(py)
    for pkg in [*(dest / "visionmesh" / "api").rglob("*"), dest / "visionmesh" / "api"]:
        if pkg.is_dir():
            (pkg / "__init__.py").touch()
    (dest / "buf" / "validate" / "__init__.py").touch()
    # validate_pb2_grpc.py is empty noise: buf.validate has no services.
    (dest / "buf" / "validate" / "validate_pb2_grpc.py").unlink(missing_ok=True)
    for grpc_file in (dest / "visionmesh" / "api").rglob("*_pb2_grpc.py"):
        if "class " not in grpc_file.read_text():
            grpc_file.unlink()


def _diff(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [f"only in committed: {n}" for n in cmp.left_only]
    out += [f"missing: {n}" for n in cmp.right_only]
    out += [f"stale: {n}" for n in cmp.diff_files]
    for sub, sub_cmp in cmp.subdirs.items():
        out += [f"{sub}/{line}" for line in _diff(Path(sub_cmp.left), Path(sub_cmp.right))]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        fresh.mkdir()
        generate(fresh)
        problems: list[str] = []
        for rel in GENERATED:
            committed, new = OUT / rel, fresh / rel
            if args.check:
                if not committed.exists():
                    problems.append(f"{rel}: missing")
                else:
                    problems += [f"{rel}/{line}" for line in _diff(committed, new)]
            else:
                shutil.rmtree(committed, ignore_errors=True)
                shutil.copytree(new, committed)
        if problems:
            print("generated code is stale; run `make protos`:", *problems, sep="\n  ")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
