import asyncio
from tests.cli.test_e2e import *  # noqa
from tests.cli.test_e2e import _queued_job, _ready_dataset

async def test_demo(cli, harness, bus, token, tmp_path):
    src = tmp_path / "shapes"
    r = await cli("datasets", "synth", str(src), "--n-train", "6", "--n-val", "3", "--imgsz", "64", "--zip")
    print("=== synth\n", r.stdout, r.stderr)
    r = await cli("datasets", "upload", str(src), "--name", "shapes")
    print("=== upload\n", r.stdout, "--stderr--\n", r.stderr)
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("data.yaml", "names: [a]\ntrain: images/train\nval: images/val\n")
        archive.writestr("images/train/x.jpg", b"not an image")
        archive.writestr("images/val/y.jpg", b"not an image either")
    r = await cli("datasets", "upload", str(broken), "--name", "broken")
    print("=== broken\n", r.stdout, "--stderr--\n", r.stderr)
    r = await cli("datasets", "list")
    print("=== list\n", r.stdout)
    dataset = json.loads((await cli("datasets", "list", "--json")).stdout)["datasets"][1]
    r = await cli("datasets", "show", dataset["id"])
    print("=== show\n", r.stdout)
    r = await cli("train", "--dataset", dataset["id"], *TRAIN_FLAGS, "--imgsz", "100", "--epochs", "0")
    print("=== bad train\n", r.stdout, r.stderr)
    job = await _queued_job(cli, harness, token, dataset["id"])
    r = await cli("jobs", "list")
    print("=== jobs list\n", r.stdout)
    r = await cli("jobs", "show", job["id"])
    print("=== jobs show\n", r.stdout)
    r = await cli("jobs", "cancel", job["id"])
    print("=== cancel\n", r.stdout)
    r = await cli("whoami")
    print("=== whoami\n", r.stdout)
