"""Fault injection, third round: inputs read once and bounded, outputs never over an input.

Cases of ``docs/reliability.md`` (third attack): a bundle replaced while ``tune`` reads
it, two ``tune`` into one ``--out``, ``--out`` holding the input, special files and
oversized declarations in a bundle, a zip bomb. Every command runs under a deadline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gradtune import _io
from gradtune.embeddings import _bundle_files
from gradtune.embeddings.bundle import BundleError, load_bundle, load_bundle_digest
from gradtune.workflows.tune import tune_bundle

from . import test_faults
from .experiments._toy import config_text, toy_bundle
from .test_faults import (
    EXAMPLE,
    FAST,
    Case,
    _config,
    _deadline,
    _snapshot,
    assert_one_line_error,
    run_cli,
)

FAST_PARAMS = {"size": 40, "top_k": 30, "finetune.epochs": 20}
SRC = Path(_io.__file__).resolve().parents[1]


def _sha(path: Path, name: str | None = None) -> str:
    """:func:`gradtune._io.file_digest` of ``path`` (as if it were called ``name``)."""
    h = hashlib.sha256((name or path.name).encode())
    h.update(path.read_bytes())
    return h.hexdigest()


def _tune_argv(bundle: Path, out: Path, *extra: str) -> list:
    return ["tune", "--embeddings", bundle, "--out", out, *FAST, *extra]


# ----------------------------------------------------- one read of each input

def test_bundle_replaced_while_tune_reads_it_is_never_paired_with_the_new_digest(tmp_path, monkeypatch, capsys):
    """The old code loaded the bundle, then hashed the path again: a bundle renamed over the
    path in between got the old bundle's head under the new bundle's digest, and a rerun
    with the new bundle served that head as 'already holds this run'."""
    old, new = tmp_path / "b.npz", tmp_path / "new.npz"
    toy_bundle(0).save(old)
    toy_bundle(5).save(new)
    old_digest, new_digest = _sha(old), _sha(new, old.name)
    hash_stream = _bundle_files._hash_stream

    def swap_then_hash(fh, h):  # the replacement lands while the file is being read
        if new.exists():
            os.replace(new, old)
        hash_stream(fh, h)

    monkeypatch.setattr(_bundle_files, "_hash_stream", swap_then_hash)
    with _deadline(120):
        first = tune_bundle(old, tmp_path / "o", method_params={**FAST_PARAMS, "finetune.epochs": 2})
    monkeypatch.undo()
    assert first.result["bundle_sha256"] == old_digest  # the digest of the bytes loaded
    assert _sha(old) == new_digest  # the path now holds the new bundle
    toy_bundle(0).save(tmp_path / "ref.npz")
    with _deadline(120):
        ref = tune_bundle(tmp_path / "ref.npz", tmp_path / "ref", method_params={**FAST_PARAMS, "finetune.epochs": 2})
    assert first.result["evaluation"] == ref.result["evaluation"]  # computed on the old bundle
    code, out, err = run_cli(_tune_argv(old, tmp_path / "o", "--size", "40", "--top-k", "30"), capsys)
    assert code == 0, err
    assert "already holds" not in out  # the new bundle is computed, not served the old head


def test_bundle_changed_in_place_while_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "b.npz"
    toy_bundle(0).save(path)
    hash_stream = _bundle_files._hash_stream

    def touch_then_hash(fh, h):
        hash_stream(fh, h)
        with open(path, "r+b") as w:  # same file, new bytes at the end
            w.seek(0, os.SEEK_END)
            w.write(b"\0" * 16)

    monkeypatch.setattr(_bundle_files, "_hash_stream", touch_then_hash)
    with _deadline(30), pytest.raises(BundleError, match="changed while it was read"):
        load_bundle_digest(path)


def test_digest_is_the_file_digest_of_what_was_loaded(tmp_path):
    toy_bundle(0).save(tmp_path / "b.npz")
    toy_bundle(0).save(tmp_path / "dir")
    bundle, digest = load_bundle_digest(tmp_path / "b.npz")
    assert digest == _io.file_digest(tmp_path / "b.npz")
    np.testing.assert_array_equal(bundle.features, toy_bundle(0).features)
    assert load_bundle_digest(tmp_path / "dir")[1] == _io.file_digest(tmp_path / "dir")


def test_head_renamed_over_by_another_writer_is_not_listed_as_ours(tmp_path, monkeypatch):
    """The old code re-read head.npz after its rename to hash it: a second writer's head
    renamed over it in between was listed under the first writer's metrics."""
    real = _io.atomic_write

    def interloper(path, write):
        done = real(path, write)
        if Path(path).name == "head.npz":  # the other writer's head lands right after ours
            real(path, lambda fh: np.savez(fh, weight=np.full((2, 3), 7.0), bias=np.zeros(2)))
        return done

    monkeypatch.setattr(_io, "atomic_write", interloper)
    _io.save_run_outputs(tmp_path, "metrics.json", {"seed": 1}, {"head.npz": {"weight": np.ones((2, 3)),
                                                                             "bias": np.zeros(2)}})
    assert _io.load_run_manifest(tmp_path, "metrics.json") is None  # a mismatch, never a silent pairing


def test_two_tunes_into_one_out_leave_a_consistent_pair(tmp_path):
    bundle = tmp_path / "b.npz"
    toy_bundle(0).save(bundle)
    heads = {}
    for seed in (1, 2):  # each seed's head alone
        with _deadline(120):
            tune_bundle(bundle, tmp_path / f"solo{seed}", method_params=FAST_PARAMS, seed=seed)
        with np.load(tmp_path / f"solo{seed}" / "head.npz") as z:
            heads[seed] = z["weight"].copy()
    assert not np.array_equal(heads[1], heads[2])
    errors: list[BaseException] = []

    def tune(seed: int) -> None:
        try:
            for _ in range(3):
                tune_bundle(bundle, tmp_path / "shared", method_params=FAST_PARAMS, seed=seed, force=True)
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=tune, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    manifest = _io.load_run_manifest(tmp_path / "shared", "metrics.json")
    assert manifest is not None
    with np.load(tmp_path / "shared" / "head.npz") as z:
        np.testing.assert_array_equal(z["weight"], heads[manifest["params"]["seed"]])
    assert not (tmp_path / "shared" / ".gradtune.lock").exists()


# --------------------------------------------------- never write over an input

def test_out_holding_the_input_bundle_is_refused(tmp_path, capsys):
    hb = tmp_path / "hb"
    hb.mkdir()
    toy_bundle(0).save(hb / "head.npz")  # a bundle that happens to carry the output's name
    before = _snapshot(tmp_path)
    code, _, err = run_cli(["tune", "--embeddings", hb / "head.npz", "--out", hb, *FAST], capsys)
    assert code == 2
    assert_one_line_error(err, "tune", "would overwrite the input bundle")
    assert _snapshot(tmp_path) == before


def test_out_inside_a_folder_bundle_is_refused(tmp_path, capsys):
    toy_bundle(0).save(tmp_path / "fb")
    before = _snapshot(tmp_path)
    for out in (tmp_path / "fb", tmp_path / "fb" / "res"):
        code, _, err = run_cli(["tune", "--embeddings", tmp_path / "fb", "--out", out, *FAST], capsys)
        assert code == 2
        assert_one_line_error(err, "tune", "inside the input bundle folder")
    assert _snapshot(tmp_path) == before


# -------------------------------------------- special files and declared sizes

def _folder_bundle(tmp: Path) -> Path:
    toy_bundle(0).save(tmp / "fb")
    return tmp / "fb"


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link"])
def test_folder_meta_json_that_is_not_a_regular_file(tmp_path, capsys, kind):
    fb = _folder_bundle(tmp_path)
    if kind == "fifo":
        os.mkfifo(fb / "meta.json")
    else:
        os.symlink("/dev/zero", fb / "meta.json")
    code, _, err = run_cli(_tune_argv(fb, tmp_path / "o"), capsys, timeout=30)
    assert code == 2
    assert_one_line_error(err, "tune", "meta.json' is not a regular file")


def test_folder_meta_json_too_large_or_too_deep(tmp_path, capsys):
    fb = _folder_bundle(tmp_path)
    with open(fb / "meta.json", "wb") as fh:
        fh.truncate(_bundle_files.META_JSON_LIMIT + 1)  # sparse: no disk used
    code, _, err = run_cli(_tune_argv(fb, tmp_path / "o"), capsys, timeout=30)
    assert code == 2
    assert_one_line_error(err, "tune", "may hold at most")
    (fb / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(_tune_argv(fb, tmp_path / "o"), capsys, timeout=30)
    assert code == 2
    assert_one_line_error(err, "tune", "meta.json' is not valid JSON")


def _npy_with_header(shape: tuple[int, ...], body: bytes = b"") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_2_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + body


def test_npy_header_declaring_terabytes_is_named_damaged(tmp_path, capsys):
    fb = _folder_bundle(tmp_path)
    (fb / "features.npy").write_bytes(_npy_with_header((1 << 38, 4), b"\0" * 64))  # 4 TiB declared
    code, _, err = run_cli(_tune_argv(fb, tmp_path / "o"), capsys, timeout=30)
    assert code == 2
    assert_one_line_error(err, "tune", "truncated or damaged: its header declares 4.1e+03 GiB")
    assert "memory" not in err.lower()


def test_declared_sizes_over_the_free_memory_are_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "b.npz"
    toy_bundle(0).save(path)
    monkeypatch.setattr(_bundle_files, "memory_budget", lambda: 1000)
    read = []
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: read.append(1))
    with pytest.raises(BundleError, match="more than the 1000 bytes of memory free; nothing was read"):
        load_bundle(path)
    assert not read


BOMB_ROWS, BOMB_DIM = (6 << 30) // (4 * 256), 256  # 6 GiB of float32 zeros


def _zip_bomb(path: Path) -> None:
    """A .npz of a few MB whose features inflate to 6 GiB (consistent header), with 10 labels."""
    header = _npy_with_header((BOMB_ROWS, BOMB_DIM))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("features.npy", "w", force_zip64=True) as fh:
            fh.write(header)
            block = bytes(1 << 22)
            for _ in range(BOMB_ROWS * BOMB_DIM * 4 // len(block)):
                fh.write(block)
        for name, arr in (("format_version", np.asarray(1)), ("labels", np.arange(10) % 2),
                          ("split", np.array(["train"] * 10))):
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(name + ".npy", buf.getvalue())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc (Linux)")
def test_zip_bomb_is_refused_from_its_directory_with_little_memory(tmp_path):
    bomb = tmp_path / "bomb.npz"
    _zip_bomb(bomb)
    assert bomb.stat().st_size < 64 << 20
    # VmHWM: the peak resident size of this process image (ru_maxrss would carry over the
    # forked parent's size across exec)
    probe = ("import sys\n"
             "def hwm():\n"
             "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
             "from gradtune.embeddings.bundle import BundleError, load_bundle\n"
             "base = hwm()\n"
             "try:\n    load_bundle(sys.argv[1])\nexcept BundleError as err:\n    print(err)\n"
             "print(base, hwm())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", probe, str(bomb)], capture_output=True, text=True, timeout=120,
                         env=env)
    assert res.returncode == 0, res.stderr
    message, peaks = res.stdout.strip().splitlines()
    assert f"labels must have shape ({BOMB_ROWS},)" in message and "before reading the data" in message
    base_kib, peak_kib = map(int, peaks.split())
    assert peak_kib < 500 * 1024, f"peak resident {peak_kib / 1024:.0f} MiB"
    assert peak_kib - base_kib < 64 * 1024  # nothing of the 6 GiB was inflated


def test_meta_json_is_part_of_the_digest(tmp_path):
    fb = _folder_bundle(tmp_path)
    (fb / "meta.json").write_text(json.dumps({"a": 1}))
    d1 = load_bundle_digest(fb)[1]
    (fb / "meta.json").write_text(json.dumps({"a": 2}))
    assert load_bundle_digest(fb)[1] != d1


# ------------------------------------------------- the table, third round

def _grid_config(tmp: Path, seeds: int = 1, sizes: int = 1, lrs: int = 1) -> Path:
    toy_bundle(0).save(tmp / "b.npz")
    cfg = tmp / "big.toml"
    cfg.write_text("\n".join([
        "[experiment]", 'name = "big"', f'benchmarks = ["bundle:{tmp / "b.npz"}"]',
        f"seeds = [{', '.join(map(str, range(seeds)))}]", 'methods = ["gradtune"]', "[grid.gradtune]",
        f"size = [{', '.join(str(100 + i) for i in range(sizes))}]",
        f'"finetune.lr" = [{", ".join(str(0.001 * (i + 1)) for i in range(lrs))}]', ""]))
    return cfg


ROUND3 = [
    Case("run dry-run 10^6 seeds", "run", lambda t: ["run", _grid_config(t, seeds=10**6), "--dry-run"], 2,
         "expands to 1000000 runs"),
    Case("run dry-run grid of 10^6 variants", "run", lambda t: ["run", _grid_config(t, sizes=1000, lrs=1000),
                                                                "--dry-run"], 2, "grid.gradtune: the grid expands"),
    Case("run dry-run num_threads 100000", "run", lambda t: ["run", _config(t, '"finetune.num_threads" = 100000'),
                                                             "--dry-run"], 2, "num_threads: must lie in 1..1024"),
    Case("run dry-run num_threads 0", "run", lambda t: ["run", _config(t, '"finetune.num_threads" = 0'),
                                                        "--dry-run"], 2, "num_threads: must lie in 1..1024"),
    Case("tune --param num_threads 100000", "tune", lambda t: [
        "tune", "--embeddings", EXAMPLE, "--out", t / "o", "--method", "afr", "--param",
        "finetune.num_threads=100000"], 2, "num_threads"),
]


@pytest.mark.parametrize("case", ROUND3, ids=[c.name for c in ROUND3])
def test_fault_round3(case: Case, tmp_path, capsys):
    test_faults.test_fault(case, tmp_path, capsys)


# ------------------------------------------------------------- stores and reports

def _figure_store(tmp: Path, name: str = "toy", methods: tuple[str, ...] = ("erm", "gradtune")) -> Path:
    toy_bundle(0).save(tmp / "b.npz")
    cfg = tmp / f"{name}-{'-'.join(methods)}.toml"
    cfg.write_text(config_text({"toy-a": tmp / "b.npz"}, name=name, seeds=(0,), methods=methods, epochs=2,
                               tables=("table1", "fig2", "fig4")))
    return cfg


def test_report_replaces_a_link_at_a_figure_path_instead_of_following_it(tmp_path, capsys):
    cfg = _figure_store(tmp_path)
    assert run_cli(["run", cfg, "--out", tmp_path / "res", "--quiet"], capsys)[0] == 0
    assert run_cli(["report", tmp_path / "res", "--out", tmp_path / "r"], capsys)[0] == 0
    victim = tmp_path / "outside.png"
    victim.write_bytes(b"keep me")
    figures = sorted((tmp_path / "r").rglob("*.png"))
    assert figures
    for fig in figures:
        fig.unlink()
        fig.symlink_to(victim)
    code, _, err = run_cli(["report", tmp_path / "res", "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    assert victim.read_bytes() == b"keep me"
    for fig in figures:
        assert not fig.is_symlink() and fig.read_bytes()[:4] == b"\x89PNG"


def test_a_second_config_of_the_same_experiment_name_warns(tmp_path, capsys):
    first = _figure_store(tmp_path, methods=("erm", "random"))
    second = _figure_store(tmp_path, methods=("erm", "gradtune"))
    assert run_cli(["run", first, "--out", tmp_path / "res", "--quiet"], capsys)[0] == 0
    code, _, err = run_cli(["run", first, "--out", tmp_path / "res", "--quiet"], capsys)
    assert code == 0 and "warning" not in err  # the same config again: nothing to warn about
    code, _, err = run_cli(["run", second, "--out", tmp_path / "res", "--quiet"], capsys)
    assert code == 0
    warned = [line for line in err.splitlines() if line.startswith("gradtune run: warning:")]
    assert len(warned) == 1 and "planned by another config (2 runs)" in warned[0], err
    assert "experiment.name" in warned[0] and str(tmp_path / "res" / "results.sqlite") in warned[0]
