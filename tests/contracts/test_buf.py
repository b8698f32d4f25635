"""buf lint and buf breaking pass on protos/ and demonstrably catch bad changes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _rule_ids(result: subprocess.CompletedProcess[str]) -> set[str]:
    """Rule ids from buf's --error-format=json output (one JSON object per line)."""
    return {json.loads(line)["type"] for line in result.stdout.splitlines() if line.strip()}


def _edit(path: Path, old: str, new: str, *, regex: bool = False) -> None:
    text = path.read_text()
    edited = re.sub(old, new, text) if regex else text.replace(old, new)
    assert edited != text, f"{old!r} not found in {path}"
    path.write_text(edited)


def test_lint_passes(buf_check: ModuleType, image_path: Path) -> None:
    result = buf_check.buf("lint", str(image_path), "--error-format=json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_check_script_passes() -> None:
    # The whole gate as CI runs it: lint, then breaking against HEAD.
    result = subprocess.run(
        [sys.executable, "scripts/buf_check.py"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf lint: ok" in result.stdout


# Each edit damages one file of a scratch copy of protos/ and names the rule that must
# catch it: the naming rules come from STANDARD, the comment rules from buf.yaml's own
# additions (so this also proves buf reads our buf.yaml for an image input), PROTOVALIDATE
# checks the buf.validate annotations themselves. One lint run covers them all (each
# build and lint costs about half a second).
BAD_EDITS = [
    (
        "visionmesh/inference/v1/inference.proto",
        r"\bPredictTiming\b",
        "predict_timing",
        "MESSAGE_PASCAL_CASE",
    ),
    (
        "visionmesh/embedding/v1/embedding.proto",
        r"(?m)^  // Deletes a collection and all its points\. Errors: NOT_FOUND\.\n",
        "",
        "COMMENT_RPC",
    ),
    (
        "visionmesh/export/v1/export.proto",
        r"(?m)^// Name, element type and shape of a model input or output tensor\.\n",
        "",
        "COMMENT_MESSAGE",
    ),
    (
        "visionmesh/training/v1/training.proto",
        r"\bnum_workers\b",
        "numWorkers",
        "FIELD_LOWER_SNAKE_CASE",
    ),
    (
        "visionmesh/gateway/v1/auth.proto",
        r"min_len: 3\n    max_len: 64",
        "min_len: 64\n    max_len: 3",
        "PROTOVALIDATE",
    ),
]


def test_lint_fails_on_bad_copy(
    protos_copy: Path, gen_protos: ModuleType, buf_check: ModuleType, tmp_path: Path
) -> None:
    for file, old, new, _ in BAD_EDITS:
        _edit(protos_copy / file, old, new, regex=True)
    image = gen_protos.build_image(tmp_path / "bad.binpb")
    result = buf_check.buf("lint", str(image), "--error-format=json")
    assert result.returncode != 0
    by_file: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        error = json.loads(line)
        by_file.setdefault(error["path"], set()).add(error["type"])
    for file, _, _, rule in BAD_EDITS:
        assert rule in by_file.get(file, set()), f"{rule} not reported for {file}: {by_file}"


def test_buf_check_script_fails_on_bad_copy(protos_copy: Path) -> None:
    _edit(protos_copy / "visionmesh/inference/v1/inference.proto", r"\bBox\b", "box", regex=True)
    result = subprocess.run(
        [sys.executable, "scripts/buf_check.py", "--protos", str(protos_copy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "buf lint failed" in result.stdout


def _breaking(buf_check: ModuleType, current: Path, against: Path) -> subprocess.CompletedProcess:
    return buf_check.buf("breaking", str(current), "--against", str(against), "--error-format=json")


def test_breaking_passes_against_itself(buf_check: ModuleType, image_path: Path) -> None:
    result = _breaking(buf_check, image_path, image_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_allows_a_new_field(
    protos_copy: Path, gen_protos: ModuleType, buf_check: ModuleType, image_path: Path
) -> None:
    _edit(
        protos_copy / "visionmesh/export/v1/export.proto",
        "  optional bool simplify = 11;\n",
        "  optional bool simplify = 11;\n  // New.\n  string added = 99;\n",
    )
    changed = gen_protos.build_image(protos_copy.parent / "changed.binpb")
    result = _breaking(buf_check, changed, image_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_fails_on_renumbered_field(
    protos_copy: Path, gen_protos: ModuleType, buf_check: ModuleType, image_path: Path
) -> None:
    _edit(
        protos_copy / "visionmesh/export/v1/export.proto",
        "bool dynamic_batch = 4;",
        "bool dynamic_batch = 40;",
    )
    changed = gen_protos.build_image(protos_copy.parent / "changed.binpb")
    result = _breaking(buf_check, changed, image_path)
    assert result.returncode != 0
    # WIRE_JSON reports the old number as deleted (its name and number not reserved).
    assert any(r.startswith("FIELD_NO_DELETE") for r in _rule_ids(result)), result.stdout
    assert "dynamic_batch" in result.stdout


def test_breaking_fails_on_changed_kserve_wire(
    protos_copy: Path, gen_protos: ModuleType, buf_check: ModuleType, image_path: Path
) -> None:
    # The wire-compat contract is guarded like ours, not exempted.
    _edit(
        protos_copy / "inference/grpc_service.proto",
        "repeated bytes raw_input_contents = 7;",
        "repeated string raw_input_contents = 7;",
    )
    changed = gen_protos.build_image(protos_copy.parent / "changed.binpb")
    result = _breaking(buf_check, changed, image_path)
    assert result.returncode != 0
    assert "FIELD_WIRE_JSON_COMPATIBLE_TYPE" in _rule_ids(result), result.stdout
