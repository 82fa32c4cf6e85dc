"""What a hostile user meets: a busy or unwritable output folder, bad flags, corrupt files, misuse of
``attach``. Each refusal is a message naming the bad value, given before any work; nothing is computed
twice and nothing is set aside for a file that turns out to be broken."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from d2pruner import D2PrunerConfig
from d2pruner.models import llava, tiny
from model_inputs import left_padded_batch
from reproduce import adapter, records
from reproduce.__main__ import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")


class Loaded(Exception):
    """Raised instead of loading a model: the run got past its checks."""


@pytest.fixture
def no_model(monkeypatch):
    """A run that reaches model loading raises :class:`Loaded` (the checks must come first)."""
    def load(*args, **kwargs):
        raise Loaded("the model was loaded")
    monkeypatch.setattr(adapter, "load", load)


def _hold_lock(out: pathlib.Path) -> subprocess.Popen:
    """Another process holding ``out``'s lock until its stdin closes (then releasing it)."""
    code = ("import sys; from reproduce.records import OutputLock; "
            f"lock = OutputLock(__import__('pathlib').Path({str(out)!r}), command='python -m reproduce table2 --smoke'); "
            "lock.acquire(); print('held', flush=True); sys.stdin.read(); lock.release()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------------------------------------
# The output folder: one run at a time, stale locks taken over, unwritable refused first
# ---------------------------------------------------------------------------------------------


def test_a_second_run_into_a_busy_out_stops_naming_the_holder_before_loading(tmp_path, no_model, capsys):
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        assert main(["table2", "--smoke", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another run: pid {holder.pid} on " in err and ", started 20" in err
        assert "python -m reproduce table2 --smoke" in err and "use another --out" in err
    finally:
        holder.communicate("")
    with pytest.raises(Loaded):  # released: the next run goes on (to loading the model)
        main(["table2", "--smoke", "--out", str(out)])
    assert "no longer running" not in capsys.readouterr().err, "a lock released cleanly is not stale"


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_note(tmp_path, no_model, capsys):
    out = tmp_path / "out"
    holder = _hold_lock(out)
    holder.kill()
    holder.wait()
    with pytest.raises(Loaded):
        main(["table2", "--smoke", "--out", str(out)])
    err = capsys.readouterr().err
    assert "was left by a run that is no longer running" in err and f"pid {holder.pid} on " in err
    lock = records.OutputLock(out)
    lock.acquire()  # and released again when that run ended
    assert lock.stale is None
    lock.release()


def test_output_lock_per_rank(tmp_path):
    """The processes of one torchrun run hold one lock each; a second run of the same shape collides on each."""
    first = [records.OutputLock(tmp_path, r, 2).acquire() for r in range(2)]
    for r in range(2):
        with pytest.raises(records.OutputBusy, match=f"pid {os.getpid()} on "):
            records.OutputLock(tmp_path, r, 2).acquire()
    for lock in first:
        lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".lock.rank1-of-2"]


def test_an_unwritable_out_is_refused_before_any_work(tmp_path, no_model, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["table2", "--smoke", "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to --out {blocker / 'out'}" in err


@pytest.mark.lmms
def test_two_runs_into_one_out_never_compute_a_sample_twice(tmp_path):
    """Run A is stopped (SIGSTOP) after its first answers; run B into the same ``--out`` stops naming A;
    A is killed; run C takes over A's stale lock, resumes A's answers and computes only the rest."""
    from test_reproduce_smoke import answer_lines, smoke_env

    out = tmp_path / "out"
    args = [sys.executable, "-m", "reproduce", "table2", "--smoke", "--limit", "2", "--rows", "Vanilla@100%",
            "--columns", "POPE,MME", "--out", str(out)]
    a = subprocess.Popen(args, cwd=ROOT, env=smoke_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and a.poll() is None:
            if any(p.read_text().count("\n") >= 2 for p in out.glob("cells/*/*.answers.jsonl")):
                break
            time.sleep(0.01)
        assert a.poll() is None, f"run A ended before it could be stopped: {a.stderr.read()[-2000:]}"
        os.killpg(a.pid, signal.SIGSTOP)
        before = answer_lines(out)
        b = subprocess.run(args, cwd=ROOT, env=smoke_env(tmp_path), capture_output=True, text=True, timeout=600)
        assert b.returncode == 2, b.stderr[-3000:]
        assert f"is in use by another run: pid {a.pid} on " in b.stderr
        assert answer_lines(out) == before, "the refused run wrote answers"
    finally:
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
    c = subprocess.run(args, cwd=ROOT, env=smoke_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert c.returncode == 0, c.stderr[-3000:]
    assert f"no longer running (pid {a.pid} on " in c.stderr
    for path, lines in answer_lines(out).items():
        keys = [r["key"] for r in lines]
        assert len(keys) == len(set(keys)) == 2, f"{path.name}: {keys}"
        assert lines[:len(before.get(path, []))] == before.get(path, [])


# ---------------------------------------------------------------------------------------------
# python -m reproduce: bad options and corrupt files, named before any work
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--rows", "--columns"])
@pytest.mark.parametrize("value", [",", " , ", ""])
def test_empty_rows_or_columns_are_refused_before_loading(flag, value, tmp_path, no_model, capsys):
    assert main(["table2", "--smoke", flag, value, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {value!r} names no {'row' if flag == '--rows' else 'column'}" in err
    assert "D2Pruner@10%" in err or "POPE" in err  # and lists the valid ones


@NO_CUDA
def test_cuda_on_a_machine_without_it_is_a_message(tmp_path, no_model, capsys):
    assert main(["table2", "--smoke", "--device", "cuda", "--out", str(tmp_path / "out")]) == 2
    assert "device 'cuda': CUDA is not available on this machine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="device 'cuda:1': CUDA is not available"):
        adapter.process_device("cuda:1")


def test_a_corrupt_prior_is_named_before_any_answer_is_set_aside(tmp_path, no_model, capsys):
    out = tmp_path / "out"
    (out / "cells" / "D2Pruner_10pct").mkdir(parents=True)
    answers = out / "cells" / "D2Pruner_10pct" / "POPE.answers.jsonl"
    answers.write_text(json.dumps({"fingerprint": {"prior_sha256": "of the prior before"}}) + "\n"
                       + json.dumps({"key": "k", "answer": "yes", "doc_id": 0}) + "\n")
    (out / "prior.json").write_text('{"meta": {"prune_layer": 2},\n "values": [0.1, 0.2')  # cut short
    assert main(["table2", "--smoke", "--rows", "D2Pruner@10%", "--columns", "POPE", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"prior file {out / 'prior.json'} is not valid JSON at line 2" in err
    assert [p.name for p in answers.parent.iterdir()] == ["POPE.answers.jsonl"], "answers were set aside"


def test_a_corrupt_answer_line_is_named_with_its_file_and_line(tmp_path):
    path = tmp_path / "POPE.answers.jsonl"
    cache = adapter.SampleCache(path, {"method": "fastv"})
    cache.add([{"key": "a", "answer": "yes", "doc_id": 0}, {"key": "b", "answer": "no", "doc_id": 1}])
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10] + "#" + lines[1][11:]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"{path} line 2 is not valid JSON"):
        adapter.SampleCache(path, {"method": "fastv"})
    with pytest.raises(ValueError, match=f"{path} line 2 is not valid JSON"):
        records.answers_digest(path)


def test_a_corrupt_cell_record_is_named(tmp_path):
    path = tmp_path / "POPE.json"
    path.write_text('{\n "cell": {"limit": 2},\n "value": 1.0,,\n}\n')
    with pytest.raises(ValueError, match=f"cell record {path} is not valid JSON at line 3"):
        records.reusable_record(path, {"limit": 2})


# ---------------------------------------------------------------------------------------------
# attach: refusals at attach time, a second attach, statistics of a text-only pass
# ---------------------------------------------------------------------------------------------


def test_a_second_attach_is_refused_until_the_first_is_removed():
    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(2, 3)])
    first = llava.attach(model, 64)
    with pytest.raises(ValueError, match=r"already has a pruning handle attached \(method 'd2pruner', budget 64\); "
                                         r"call \.remove\(\) on that handle"):
        llava.attach(model, 32, method="fastv")
    with torch.no_grad():
        model(**batch)
    assert first.stats[0].n_visual_after == 64, "the refused attach disturbed the first handle"
    first.remove()
    with llava.attach(model, 32, method="fastv") as second, torch.no_grad():
        model(**batch)
    assert second.stats[0].n_visual_after == 32 and second.stats[0].method == "fastv"
    with llava.attach(model, 16) as third:  # leaving a with block frees the model too
        pass
    assert third.stats == []
    llava.attach(model, 16).remove()


def test_attach_refuses_a_dict_config_and_an_unknown_backend():
    model = tiny.tiny_llava()
    with pytest.raises(TypeError, match=r"config must be a d2pruner.D2PrunerConfig, got dict .*pass D2PrunerConfig\(\*\*config\)"):
        llava.attach(model, 64, config={"prune_layer": 3})
    with pytest.raises(ValueError, match=r"backend must be one of \('fast', 'reference'\), got 'cuda'"):
        llava.attach(model, 64, backend="cuda")
    llava.attach(model, 64, config=D2PrunerConfig(prune_layer=3), backend="reference").remove()  # nothing left attached


def test_stats_are_reset_by_a_text_only_pass():
    model = tiny.tiny_llava()
    batch, _ = left_padded_batch("llava", [(2, 3)])
    text = torch.tensor([[1, 5, 7, 9]])
    with llava.attach(model, 64) as handle, torch.no_grad():
        model(**batch)
        assert [s.n_visual_after for s in handle.stats] == [64]
        model(input_ids=text)
        assert handle.stats == [] and handle.stage_stats == []


# ---------------------------------------------------------------------------------------------
# The prior command: flags checked first, unreadable images named and skipped
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny LLaVA (4 decoder layers) and its processor saved as a checkpoint folder."""
    from d2pruner.models import tiny_processor

    path = tmp_path_factory.mktemp("tiny-llava")
    tiny.tiny_llava().save_pretrained(path)
    tiny_processor.tiny_processor("llava", max_tiles=4).save_pretrained(path)
    return path


def _images(folder: pathlib.Path, n: int = 2) -> pathlib.Path:
    from PIL import Image

    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (40, 30), (40 * i, 20, 200)).save(folder / f"good{i}.png")
    return folder


@pytest.mark.parametrize("layer", [0, -1, 4, 9])
def test_prior_command_refuses_a_prune_layer_out_of_range(layer, tiny_checkpoint, tmp_path, capsys):
    from d2pruner.models.prior.__main__ import main as prior_main

    out = tmp_path / "p.json"
    args = ["--model", str(tiny_checkpoint), "--images", str(_images(tmp_path / "imgs")), "--out", str(out),
            "--prune-layer", str(layer), "--dtype", "float32", "--device", "cpu"]
    try:
        code = prior_main(args)
    except SystemExit as exit_:  # argparse's own error exit
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"--prune-layer {layer}" in err and ("1 to 3" in err or "at least 1" in err), err
    assert not out.exists() and not out.with_name("p.json.partial.json").exists()


@NO_CUDA
def test_prior_command_refuses_cuda_without_cuda(tiny_checkpoint, tmp_path, capsys):
    from d2pruner.models.prior.__main__ import main as prior_main

    with pytest.raises(SystemExit) as exit_:
        prior_main(["--model", str(tiny_checkpoint), "--images", str(tmp_path), "--out", str(tmp_path / "p.json"),
                    "--device", "cuda"])
    assert exit_.value.code == 2 and "--device: device 'cuda': CUDA is not available" in capsys.readouterr().err


@NO_CUDA
def test_load_model_refuses_cuda_without_cuda_before_reading_anything(tmp_path):
    from d2pruner.models.loading import load_model

    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
        load_model(str(tmp_path / "no-such-checkpoint"), device="cuda")


def test_prior_command_skips_a_corrupt_image_naming_it_and_counts_it(tiny_checkpoint, tmp_path, capsys):
    from d2pruner.models.prior import SkippedImageWarning
    from d2pruner.models.prior.__main__ import main as prior_main

    images = _images(tmp_path / "imgs")
    bad = images / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "p.json"
    args = ["--model", str(tiny_checkpoint), "--images", str(images), "--out", str(out), "--dtype", "float32",
            "--device", "cpu"]
    with pytest.warns(SkippedImageWarning, match=f"image {bad} cannot be read"):
        assert prior_main(args) == 0
    assert "(1 unreadable images skipped" in capsys.readouterr().out
    meta = json.loads(out.read_text())["meta"]
    assert meta["n_images"] == 2 and meta["n_skipped_images"] == 1
    [(key, why)] = meta["skipped_images"].items()
    assert key.startswith("broken.jpg:") and str(bad) in why


def test_a_corrupt_prior_file_is_named(tmp_path, tiny_checkpoint, capsys):
    from d2pruner.models.prior import Prior
    from d2pruner.models.prior.__main__ import main as prior_main

    path = tmp_path / "p.json"
    path.write_text('{"meta": {}, "values": [1.0,\n 2.0,,]}')
    with pytest.raises(ValueError, match=f"prior file {path} is not valid JSON at line 2"):
        Prior.load(path)
    with pytest.raises(ValueError, match=f"prior file {path} is not valid JSON at line 2"):
        llava.attach(tiny.tiny_llava(), 64, prior=path)
    assert prior_main(["--model", str(tiny_checkpoint), "--images", str(_images(tmp_path / "imgs")), "--out", str(path),
                       "--dtype", "float32", "--device", "cpu"]) == 2
    assert f"prior file {path} is not valid JSON" in capsys.readouterr().err
