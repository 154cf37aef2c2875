"""Fault injection: every command over a table of bad inputs and faults.

Each case builds its inputs in a fresh folder, runs ``gradtune.cli.main`` in this
process and asserts the exit code (2 bad input, 1 failed run, 0 accepted), that stderr
holds one error line of the command naming the problem and no traceback, and that
no file that existed before the command was changed. New commands join ``CASES``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from gradtune import cli
from gradtune.embeddings.bundle import EmbeddingBundle

from .experiments._toy import config_text, toy_bundle

EXAMPLE = Path(cli.__file__).parent / "examples" / "spurious_example.npz"
FAST = ["--epochs", "2"]


# ------------------------------------------------------------------ helpers

def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (FIFOs and the like by name only)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink() or p.is_dir():
            continue
        if p.is_file():
            out[os.fsdecode(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[os.fsdecode(p)] = "special"
    return out


def _bundle(tmp: Path, name: str = "b.npz", **changes: np.ndarray | None) -> Path:
    """The toy bundle saved with ``changes`` written over its arrays (None deletes one), with
    no content hash, as a hand-written file would be."""
    path = tmp / name
    toy_bundle(0).save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "content_sha256"}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _edit_saved(tmp: Path, edit: Callable[[dict], None]) -> Path:
    """A bundle saved by gradtune, then changed in place (its content hash kept)."""
    path = tmp / "edited.npz"
    toy_bundle(0).save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    edit(arrays)
    np.savez(path, **arrays)
    return path


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (a FIFO read would block forever)."""
    def alarm(*_):
        raise TimeoutError(f"the command did not finish within {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _can_mount() -> bool:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    probe = Path(tempfile.gettempdir()) / f"gradtune-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    except OSError:
        return False
    finally:
        probe.rmdir()


CAN_MOUNT = _can_mount()


@contextlib.contextmanager
def mounted(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def read_only_folder(tmp: Path, contents: Callable[[Path], None] | None = None) -> contextlib.AbstractContextManager:
    """A folder no one can write: chmod 555 for a normal user, a read-only tmpfs for root."""
    folder = tmp / "ro"

    @contextlib.contextmanager
    def ctx():
        if os.geteuid() != 0:
            folder.mkdir()
            if contents:
                contents(folder)
            folder.chmod(0o555)
            try:
                yield folder
            finally:
                folder.chmod(0o755)
            return
        if not CAN_MOUNT:
            pytest.skip("running as root without mount permission: no folder here is read-only for root")
        stage = tmp / "stage"
        stage.mkdir()
        if contents:
            contents(stage)
        with mounted(folder, "size=4m"):
            for p in stage.iterdir():
                (folder / p.name).write_bytes(p.read_bytes())
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            yield folder
    return ctx()


def run_cli(argv: list[str], capsys, timeout: int = 120) -> tuple[int, str, str]:
    with _deadline(timeout):
        code = cli.main([os.fsdecode(a) if isinstance(a, Path) else a for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, command: str, needle: str) -> None:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"gradtune {command}: error:")]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"


# ------------------------------------------------------------------ the table

@dataclass
class Case:
    """One attack: ``setup(tmp) -> argv`` builds the inputs; expected code and message."""

    name: str
    command: str
    setup: Callable[[Path], list]
    code: int
    needle: str = ""


def _toy_store(tmp: Path) -> Path:
    """A results store with a finished grid of two runs."""
    (tmp / "bundles").mkdir(exist_ok=True)
    toy_bundle(0).save(tmp / "bundles" / "toy-a.npz")
    cfg = tmp / "toy.toml"
    cfg.write_text(config_text({"toy-a": tmp / "bundles" / "toy-a.npz"}, seeds=(0,), methods=("erm", "gradtune"),
                               epochs=2))
    assert cli.main(["run", str(cfg), "--out", str(tmp / "res"), "--quiet"]) == 0
    return tmp / "res" / "results.sqlite"


def _store_variant(kind: str) -> Callable[[Path], list]:
    def setup(tmp: Path) -> list:
        store = _toy_store(tmp)
        bad = tmp / "bad.sqlite"
        data = store.read_bytes()
        if kind == "truncated":
            bad.write_bytes(data[: len(data) // 3])
        elif kind == "garbage":
            bad.write_bytes(np.random.default_rng(0).bytes(4096))
        elif kind == "zero":
            bad.write_bytes(b"")
        elif kind == "foreign":
            with sqlite3.connect(bad) as conn:
                conn.execute("CREATE TABLE t (x)")
            conn.close()
        elif kind == "schema":
            bad.write_bytes(data)
            with sqlite3.connect(bad) as conn:
                conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
            conn.close()
        elif kind == "fifo":
            os.mkfifo(bad)
        return [bad]
    return setup


def _run_on(kind: str) -> Callable[[Path], list]:
    store_setup = _store_variant(kind)

    def setup(tmp: Path) -> list:
        bad = store_setup(tmp)[0]
        return ["run", tmp / "toy.toml", "--out", bad, "--quiet"]
    return setup


def _config(tmp: Path, extra: str) -> Path:
    toy_bundle(0).save(tmp / "b.npz")
    cfg = tmp / "c.toml"
    key = extra.split("=")[0].strip()
    lines = config_text({"toy": tmp / "b.npz"}, seeds=(0,), methods=("gradtune",), epochs=2).splitlines()
    lines = [line for line in lines if not (key and line.startswith(key + " "))]
    cfg.write_text("\n".join(lines).replace("size = 40", f"size = 40\n{extra}"))
    return cfg


def _fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe.npz")
    return tmp / "pipe.npz"


def _fifo_in_dir(tmp: Path) -> Path:
    d = tmp / "dirbundle"
    toy_bundle(0).save(d)
    (d / "features.npy").unlink()
    os.mkfifo(d / "features.npy")
    return d


def _pickle_ckpt(tmp: Path) -> Path:
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp / "evil.pt"
    torch.save({"format": 1, "x": Evil()}, path)
    return path


def _other_arch_ckpt(tmp: Path) -> Path:
    from gradtune.models.checkpoint import save_checkpoint
    from gradtune.models.classifier import build_mlp_classifier

    model = build_mlp_classifier(4, 2, hidden=(8,))
    path = tmp / "other.pt"
    save_checkpoint(path, model, epoch=1, meta={"dataset": "waterbirds", "root": str(tmp)})
    ckpt = torch.load(path, weights_only=True)
    ckpt["spec"] = {**ckpt["spec"], "hidden": [16]}  # the spec of another width
    torch.save(ckpt, path)
    return path


def _heldout_one_class(tmp: Path) -> Path:
    b = toy_bundle(0)
    labels = b.labels.copy()
    labels[b.split == "val"] = 1
    return _bundle(tmp, labels=labels)


def _touch(tmp: Path, name: str) -> Path:
    (tmp / name).write_text("x")
    return tmp / name


CASES: list[Case] = [
    # tune: values
    Case("tune lr 1e9 diverges", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o", "--lr", "1e9",
                                                   *FAST], 1, "diverged at epoch 1"),
    Case("tune lr 0", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o", "--lr", "0"], 2, "--lr"),
    Case("tune lr -1", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o", "--lr", "-1"], 2, "--lr"),
    Case("tune lr nan", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o", "--lr", "nan"], 2,
         "--lr"),
    Case("tune batch size 0", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o",
                                                 "--batch-size", "0"], 2, "--batch-size"),
    Case("tune epochs 1e20", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o",
                                                "--epochs", str(10**20)], 2, "--epochs"),
    Case("tune weight decay -1", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o",
                                                    "--weight-decay", "-1"], 2, "--weight-decay"),
    Case("tune seed -1", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o", "--seed", "-1"], 2,
         "seed"),
    Case("tune bad --param", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o", "--method", "dfr",
                                                "--param", "novalue"], 2, "KEY=VALUE"),
    Case("tune unknown method", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o",
                                                   "--method", "nope"], 2, "nope"),
    Case("tune method param of wrong type", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", t / "o",
                                                               "--method", "gradtune-auto", "--param",
                                                               "xrm_steps=[1]"], 2, "xrm_steps"),
    # tune: output folder
    Case("tune out is a file", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", _touch(t, "f")], 2,
         "is a file"),
    Case("tune out under a file", "tune", lambda t: ["tune", "--embeddings", EXAMPLE, "--out", _touch(t, "f") / "x"],
         2, "not a folder"),
    # tune: bundles
    Case("bundle missing", "tune", lambda t: ["tune", "--embeddings", t / "none.npz", "--out", t / "o"], 2,
         "does not exist"),
    Case("bundle garbage", "tune", lambda t: ["tune", "--embeddings", _touch(t, "g.npz"), "--out", t / "o"], 2,
         "could not read"),
    Case("bundle truncated", "tune", lambda t: ["tune", "--embeddings", _truncate(EXAMPLE, t), "--out", t / "o"], 2,
         "could not read"),
    Case("bundle zero bytes", "tune", lambda t: ["tune", "--embeddings", _empty(t), "--out", t / "o"], 2,
         "could not read"),
    Case("bundle format 1.5", "tune", lambda t: ["tune", "--embeddings", _bundle(t, format_version=np.asarray(1.5)),
                                                 "--out", t / "o"], 2, "format version"),
    Case("bundle format 2", "tune", lambda t: ["tune", "--embeddings", _bundle(t, format_version=np.asarray(2)),
                                               "--out", t / "o"], 2, "format version"),
    Case("bundle features scaled after saving", "tune",
         lambda t: ["tune", "--embeddings", _edit_saved(t, lambda a: a.update(features=a["features"] * 1.5)),
                    "--out", t / "o"], 2, "content hash"),
    Case("bundle labels 1e12", "tune", lambda t: ["tune", "--embeddings", _bundle(
        t, labels=np.where(toy_bundle(0).labels == 1, 10**12, 0)), "--out", t / "o", "--fit-erm-head"], 2,
        "distinct ids"),
    Case("bundle n_classes 1e9", "tune", lambda t: ["tune", "--embeddings", _bundle(
        t, n_classes=np.asarray(10**9), head_weight=None, head_bias=None), "--out", t / "o", "--fit-erm-head"], 2,
        "classes"),
    Case("bundle group id 1e9", "tune", lambda t: ["tune", "--embeddings", _bundle(
        t, groups=np.where(toy_bundle(0).groups == 3, 10**9, toy_bundle(0).groups),
        group_names=None), "--out", t / "o"], 2, "groups go up to 1000000000"),
    Case("bundle NaN labels", "tune", lambda t: ["tune", "--embeddings", _bundle(
        t, labels=np.where(toy_bundle(0).labels == 1, np.nan, 0.0)), "--out", t / "o"], 2, "integer class ids"),
    Case("bundle float labels 0.9", "tune", lambda t: ["tune", "--embeddings", _bundle(
        t, labels=toy_bundle(0).labels * 0.9), "--out", t / "o"], 2, "integer class ids"),
    Case("bundle held-out of one class", "tune", lambda t: ["tune", "--embeddings", _heldout_one_class(t),
                                                            "--out", t / "o", *FAST], 2, "single class"),
    Case("bundle FIFO", "tune", lambda t: ["tune", "--embeddings", _fifo(t), "--out", t / "o"], 2, "regular file"),
    Case("bundle dir with FIFO features.npy", "tune", lambda t: ["tune", "--embeddings", _fifo_in_dir(t),
                                                                 "--out", t / "o"], 2, "regular file"),
    Case("bundle pickled object array", "tune", lambda t: ["tune", "--embeddings", _bundle(
        t, labels=np.array([object()] * len(toy_bundle(0).labels))), "--out", t / "o"], 2, "could not read"),
    # report
    Case("report truncated store", "report", lambda t: ["report", *_store_variant("truncated")(t), "--out", t / "r"], 2,
         "corrupt"),
    Case("report garbage store", "report", lambda t: ["report", *_store_variant("garbage")(t), "--out", t / "r"], 2,
         "not a SQLite database"),
    Case("report zero-byte store", "report", lambda t: ["report", *_store_variant("zero")(t), "--out", t / "r"], 2,
         "empty"),
    Case("report foreign SQLite file", "report", lambda t: ["report", *_store_variant("foreign")(t), "--out", t / "r"],
         2, "not a gradtune results store"),
    Case("report newer schema", "report", lambda t: ["report", *_store_variant("schema")(t), "--out", t / "r"], 2,
         "schema version 99"),
    Case("report FIFO store", "report", lambda t: ["report", *_store_variant("fifo")(t), "--out", t / "r"], 2,
         "not a regular file"),
    Case("report missing store", "report", lambda t: ["report", t / "none", "--out", t / "r"], 2, "does not exist"),
    Case("report folder without store", "report", lambda t: ["report", t, "--out", t / "r"], 2, "no results.sqlite"),
    Case("report out under a file", "report", lambda t: ["report", _toy_store(t), "--out", _touch(t, "f") / "r"], 2,
         "not a folder"),
    # inspect
    Case("inspect bundle missing", "inspect", lambda t: ["inspect", t / "none.npz", "--out", t / "o"], 2,
         "neither an existing bundle"),
    Case("inspect bundle garbage", "inspect", lambda t: ["inspect", _touch(t, "g.npz"), "--out", t / "o"], 2,
         "could not read"),
    Case("inspect bundle truncated", "inspect", lambda t: ["inspect", _truncate(EXAMPLE, t), "--out", t / "o"], 2,
         "could not read"),
    Case("inspect rows 0", "inspect", lambda t: ["inspect", EXAMPLE, "--out", t / "o", "--rows", "0"], 2, "--rows"),
    Case("inspect seed -1", "inspect", lambda t: ["inspect", EXAMPLE, "--out", t / "o", "--seed", "-1"], 2, "--seed"),
    Case("inspect out under a file", "inspect", lambda t: ["inspect", EXAMPLE, "--out", _touch(t, "f") / "o"], 2,
         "not a folder"),
    # run
    Case("run truncated store", "run", _run_on("truncated"), 2, "corrupt"),
    Case("run garbage store", "run", _run_on("garbage"), 2, "not a SQLite database"),
    Case("run newer schema", "run", _run_on("schema"), 2, "schema version 99"),
    Case("run out under a file", "run", lambda t: ["run", _config(t, ""), "--out", _touch(t, "f") / "x", "--quiet"],
         2, "not a folder"),
    Case("run workers 0", "run", lambda t: ["run", _config(t, ""), "--out", t / "o", "--workers", "0"], 2,
         "--workers"),
    Case("run config missing", "run", lambda t: ["run", t / "none.toml", "--out", t / "o"], 2, "none.toml"),
    Case("run config not TOML", "run", lambda t: ["run", _touch(t, "bad.toml"), "--out", t / "o"], 2, "bad.toml"),
    Case("run dry-run epochs 1e20", "run", lambda t: ["run", _config(t, '"finetune.epochs" = 1e20'), "--dry-run"], 2,
         "finetune.epochs"),
    Case("run dry-run betas [0.9]", "run", lambda t: ["run", _config(t, '"finetune.betas" = [0.9]'), "--dry-run"], 2,
         "betas"),
    Case("run dry-run lr 0", "run", lambda t: ["run", _config(t, '"finetune.lr" = 0'), "--dry-run"], 2, "lr"),
    Case("run diverging grid", "run", lambda t: ["run", _config(t, '"finetune.lr" = 1e30'), "--out", t / "o",
                                                 "--quiet"], 1, "n/a"),
    # embed / train
    Case("embed device bogus", "embed", lambda t: ["embed", "--checkpoint", t / "c.pt", "--out", t / "e",
                                                   "--device", "bogus"], 2, "not a device name"),
    Case("embed checkpoint missing", "embed", lambda t: ["embed", "--checkpoint", t / "c.pt", "--out", t / "e"], 2,
         "does not exist"),
    Case("embed checkpoint garbage", "embed", lambda t: ["embed", "--checkpoint", _touch(t, "c.pt"), "--out", t / "e"],
         2, "could not read checkpoint"),
    Case("embed crafted pickle", "embed", lambda t: ["embed", "--checkpoint", _pickle_ckpt(t), "--out", t / "e"], 2,
         "could not read checkpoint"),
    Case("train epochs 1e20", "train", lambda t: ["train", "--dataset", "waterbirds", "--root", t, "--out", t / "tr",
                                                  "--epochs", str(10**20)], 2, "epochs"),
    Case("train keep-epochs not integers", "train", lambda t: ["train", "--dataset", "waterbirds", "--root", t,
                                                               "--out", t / "tr", "--keep-epochs", "a,b"], 2,
         "--keep-epochs"),
    Case("train device bogus", "train", lambda t: ["train", "--dataset", "waterbirds", "--root", t, "--out", t / "tr",
                                                   "--device", "bogus"], 2, "not a device name"),
    # demo
    Case("demo out under a file", "demo", lambda t: ["demo", "--out", _touch(t, "f") / "x", "--benchmarks", "nope"],
         2, "nope"),
]
if not torch.cuda.is_available():
    CASES.append(Case("embed device cuda without CUDA", "embed",
                      lambda t: ["embed", "--checkpoint", t / "c.pt", "--out", t / "e", "--device", "cuda"], 2,
                      "no CUDA device"))


def _truncate(src: Path, tmp: Path) -> Path:
    data = src.read_bytes()
    (tmp / "t.npz").write_bytes(data[: len(data) // 2])
    return tmp / "t.npz"


def _empty(tmp: Path) -> Path:
    (tmp / "e.npz").write_bytes(b"")
    return tmp / "e.npz"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, tmp_path, capsys):
    argv = case.setup(tmp_path)
    capsys.readouterr()
    before = _snapshot(tmp_path)
    try:
        code, _, err = run_cli(argv, capsys)
    except SystemExit as exc:  # argparse refuses a value: usage and one error line, exit 2
        code, err = exc.code, capsys.readouterr().err
        assert "Traceback" not in err and f"gradtune {case.command}: error:" in err, err
        assert case.needle.lower() in err.lower(), err
    else:
        if case.code and case.needle != "n/a":
            assert_one_line_error(err, case.command, case.needle)
        assert "Traceback" not in err, err
    assert code == case.code, err
    after = _snapshot(tmp_path)
    changed = [p for p, h in before.items() if after.get(p) != h]
    assert not changed, f"files changed by a failing command: {changed}"
    assert not (tmp_path / "pwned").exists()  # no pickle ever runs


def test_table_covers_every_command():
    assert {c.command for c in CASES} >= set(cli.COMMANDS) - {"experiment"} | {"run"}
    assert len(CASES) >= 50


# ------------------------------------------------------------- named behaviours

def test_diverged_grid_run_is_stored_failed_with_its_epoch(tmp_path, capsys):
    from gradtune.results.store import ResultStore

    code, _, err = run_cli(["run", _config(tmp_path, '"finetune.lr" = 1e30'), "--out", tmp_path / "o", "--quiet"],
                           capsys)
    assert code == 1 and "Traceback" not in err
    rows = ResultStore(tmp_path / "o" / "results.sqlite", readonly=True).records(status=None)
    assert [r["status"] for r in rows] == ["failed"]
    assert re.search(r"diverged at epoch \d+ of 2", rows[0]["error"])


def test_internal_error_asks_for_a_bug_report_and_shows_traceback_only_with_debug(monkeypatch, capsys):
    from gradtune.commands import report

    def boom(args):
        raise TypeError("unexpected thing")

    monkeypatch.setattr(report, "run", boom)
    code, _, err = run_cli(["report", "x", "--out", "y"], capsys)
    assert code == 1 and "Traceback" not in err
    assert_one_line_error(err, "report", "please report")
    code, _, err = run_cli(["report", "x", "--out", "y", "--debug"], capsys)
    assert code == 1 and "Traceback" in err and "unexpected thing" in err


def test_tune_reuse_checks_the_head_hash(tmp_path, capsys):
    out = tmp_path / "o"
    assert run_cli(["tune", "--embeddings", EXAMPLE, "--out", out, *FAST], capsys)[0] == 0
    head = (out / "head.npz").read_bytes()
    code, stdout, _ = run_cli(["tune", "--embeddings", EXAMPLE, "--out", out, *FAST], capsys)
    assert code == 0 and "already holds this run" in stdout
    for damage in (lambda: (out / "head.npz").write_bytes(b"garbage"), lambda: (out / "head.npz").unlink()):
        damage()
        code, stdout, _ = run_cli(["tune", "--embeddings", EXAMPLE, "--out", out, *FAST], capsys)
        assert code == 0 and "already holds" not in stdout
        assert (out / "head.npz").read_bytes() == head  # recomputed: the same seed gives the same head


def test_tune_head_of_another_seed_is_not_reused(tmp_path, capsys):
    """A crash between head.npz and metrics.json leaves the old manifest over a new head:
    the rerun sees the hash mismatch and recomputes."""
    out = tmp_path / "o"
    assert run_cli(["tune", "--embeddings", EXAMPLE, "--out", out, *FAST, "--seed", "1"], capsys)[0] == 0
    seed1_head = (out / "head.npz").read_bytes()
    assert run_cli(["tune", "--embeddings", EXAMPLE, "--out", out, *FAST, "--seed", "2"], capsys)[0] == 0
    seed2_manifest = (out / "metrics.json").read_text()
    (out / "head.npz").write_bytes(seed1_head)  # the interrupted write of the seed-1 head
    assert run_cli(["tune", "--embeddings", EXAMPLE, "--out", out, *FAST, "--seed", "2"], capsys)[0] == 0
    assert "already holds" not in capsys.readouterr().out
    assert (out / "metrics.json").read_text() == seed2_manifest


def test_tune_accepts_a_non_utf8_folder_name(tmp_path, capsys):
    out = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    code, stdout, err = run_cli(["tune", "--embeddings", EXAMPLE, "--out", out, *FAST], capsys)
    assert code == 0, err
    assert (out / "head.npz").is_file()


def test_tiny_heldout_set_is_warned_about(tmp_path, capsys):
    b = toy_bundle(0)
    keep = (b.split != "val") | (np.cumsum(b.split == "val") <= 6)
    small = EmbeddingBundle(b.features[keep], b.labels[keep], b.split[keep], head_weight=b.head_weight,
                            head_bias=b.head_bias)
    small.save(tmp_path / "s.npz")
    code, _, err = run_cli(["tune", "--embeddings", tmp_path / "s.npz", "--out", tmp_path / "o", *FAST], capsys)
    if code == 2:  # a random split may leave one class: then the clear error
        assert_one_line_error(err, "tune", "single class")
    else:
        assert code == 0 and "gradtune tune: warning:" in err and "only 3" in err


@pytest.mark.skipif(not CAN_MOUNT, reason="needs root and mount permission for a tiny tmpfs")
def test_tune_on_a_full_disk_fails_cleanly(tmp_path, capsys):
    with mounted(tmp_path / "full", "size=16k") as disk:
        (disk / "filler").write_bytes(b"x" * 12_000)
        code, _, err = run_cli(["tune", "--embeddings", EXAMPLE, "--out", disk / "o", *FAST], capsys)
        assert code == 1, err
        assert_one_line_error(err, "tune", "disk is full")
        assert sorted(p.name for p in (disk / "o").iterdir()) == []  # nothing half-written is left
        (disk / "filler").unlink()
        code, stdout, err = run_cli(["tune", "--embeddings", EXAMPLE, "--out", disk / "o", *FAST], capsys)
        assert code == 0 and "already holds" not in stdout


def test_tune_into_a_read_only_folder(tmp_path, capsys):
    with read_only_folder(tmp_path) as ro:
        code, _, err = run_cli(["tune", "--embeddings", EXAMPLE, "--out", ro / "o", *FAST], capsys)
    assert code == 2, err
    assert_one_line_error(err, "tune", "read-only" if os.geteuid() == 0 else "permission denied")


def test_report_from_a_read_only_store(tmp_path, capsys):
    store = _toy_store(tmp_path)
    data = store.read_bytes()
    with read_only_folder(tmp_path, lambda f: (f / "results.sqlite").write_bytes(data)) as ro:
        before = _snapshot(ro)
        code, stdout, err = run_cli(["report", ro, "--out", tmp_path / "rep"], capsys)
        assert code == 0, err
        assert _snapshot(ro) == before
    assert (tmp_path / "rep" / "report.md").is_file()


def test_run_into_a_read_only_store(tmp_path, capsys):
    store = _toy_store(tmp_path)
    data = store.read_bytes()
    with read_only_folder(tmp_path, lambda f: (f / "results.sqlite").write_bytes(data)) as ro:
        if os.geteuid() != 0:
            (ro / "results.sqlite").chmod(0o444)
        code, _, err = run_cli(["run", tmp_path / "toy.toml", "--out", ro, "--quiet", "--force"], capsys)
    assert code == 2, err
    assert_one_line_error(err, "run", "read-only")


# ---------------------------------------------------------------- Python API

def test_api_faults(tmp_path):
    from gradtune._validation import GradTuneInputError
    from gradtune.estimator import GradTune
    from gradtune.metrics.accuracy import evaluate
    from gradtune.models.classifier import build_mlp_classifier

    model = build_mlp_classifier(3, 2, hidden=(4,))
    x = torch.randn(8, 3)
    float_labels = [(x, torch.full((8,), 0.9))]
    with pytest.raises(GradTuneInputError, match="integer class ids"):
        GradTune(4, 2, seed=0).fit(model, float_labels)
    good = [(x, torch.tensor([0, 1] * 4))]
    with pytest.raises(GradTuneInputError, match="not a device name"):
        GradTune(4, 2, seed=0).fit(model, good, device="bogus")
    with pytest.raises(GradTuneInputError, match="meta device"):
        GradTune(4, 2, seed=0).fit(build_mlp_classifier(3, 2, hidden=(4,)).to("meta"), good)
    with pytest.raises(GradTuneInputError, match="no batches"):
        GradTune(4, 2, seed=0).fit(model, [])
    from gradtune.models.checkpoint import load_model

    with pytest.raises(GradTuneInputError, match="does not fit this model"):
        load_model(_other_arch_ckpt(tmp_path))
    with pytest.raises(GradTuneInputError, match="NaN"):
        evaluate(np.full((4, 2), np.nan), [0, 1, 0, 1], [0, 1, 2, 3])
    with pytest.raises(GradTuneInputError, match="distinct ids"):
        evaluate(np.zeros((2, 2)), [0, 1], [0, 10**9])
