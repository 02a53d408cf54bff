"""Hostile and mistaken `resume=` inputs (and gatefusion's `strategy.init_from`): pickle payloads,
wrong shapes, another strategy, truncated or garbled files, another config, a finished run, a run
still being trained, unknown paths and run ids. Each is refused with an error naming the input and
the fix, before the MLflow run it belongs to is touched; nothing in a checkpoint is executed.

The checkpoints are copies of the session's reference run (tests/run_fixtures.py), damaged here.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from experiments.run import main
from s2s.errors import UserError
from s2s.experiment import resume_point
from s2s.checkpoint import META_FILE, MODEL_FILE, STATE_FILE, CheckpointError
from s2s.resume import ResumeError, ResumeWarning, RunLock, newest_valid


class Payload:
    """Pickles to `open(marker, "w")`: unpickling it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def run_dir(reference_run, tmp_path):
    """A copy of the reference run's step-0000004 and step-0000006 checkpoints -> the newest one."""
    _, ref_out, _ = reference_run
    for name in ("step-0000004", "step-0000006"):
        shutil.copytree(ref_out / name, tmp_path / "run" / name)
    return tmp_path / "run" / "step-0000006"


@pytest.fixture
def reference_untouched(run_env, reference_run):
    """After the test: the reference run (whose id every copied checkpoint names) is as it was."""
    yield
    result, _, _ = reference_run
    client = run_env.client()
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert len(client.get_metric_history(result["run_id"], "train/loss")) == 8


def cli(run_env, ckpt, *extra) -> list[str]:
    return ["adapter_stage1", *run_env.overrides(ckpt.parent), f"resume={ckpt}", *extra, "--no-progress"]


def test_a_pickle_payload_is_refused_and_never_executed(run_env, run_dir, tmp_path, capsys, reference_untouched):
    probe, marker = tmp_path / "probe-ran", tmp_path / "payload-ran"
    torch.save(Payload(probe), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert probe.exists()  # the payload is live: an unsafe load runs it

    state = torch.load(run_dir / STATE_FILE, weights_only=True)
    torch.save({**state, "train_state": Payload(marker)}, run_dir / STATE_FILE)
    assert main(cli(run_env, run_dir)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: resume=") and err.count("\n") == 1  # one clean line, no traceback
    assert f"{run_dir / STATE_FILE} cannot be loaded safely" in err and f"resume={run_dir.parent}" in err
    with pytest.warns(ResumeWarning) as warned:
        assert newest_valid(run_dir.parent).path.name == "step-0000004"  # from the out_dir: the older one
    assert f"skipping damaged checkpoint {run_dir}: {run_dir / STATE_FILE}" in str(warned[0].message)
    assert not marker.exists()


def test_wrong_shapes_are_refused_naming_the_tensor(run_env, run_dir, capsys, reference_untouched):
    weights = load_file(str(run_dir / MODEL_FILE))
    name = sorted(weights)[0]
    weights[name] = torch.zeros(3, 3)
    save_file(weights, str(run_dir / MODEL_FILE))
    assert main(cli(run_env, run_dir)) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the backbones' loading bars
    assert err.startswith(f"error: resume: {run_dir}") and name in err and "(3, 3)" in err


def _truncate(path, keep=200):
    path.write_bytes(path.read_bytes()[:keep])


DAMAGE = {
    "truncated weights": (lambda d: _truncate(d / MODEL_FILE), MODEL_FILE, "cannot be read as safetensors"),
    "truncated trainer state": (lambda d: _truncate(d / STATE_FILE), STATE_FILE, "cannot be loaded safely"),
    "zero-length weights": (lambda d: (d / MODEL_FILE).write_bytes(b""), MODEL_FILE, "cannot be read"),
    "non-UTF-8 meta": (lambda d: (d / META_FILE).write_bytes(b"\xff\xfe{"), META_FILE, "not valid JSON"),
    "meta not a mapping": (lambda d: (d / META_FILE).write_text("[1, 2]"), META_FILE, "not a mapping"),
    "meta without config": (lambda d: (d / META_FILE).write_text(json.dumps({"step": 6})), META_FILE,
                            "no 'config'"),
    "weights only": (lambda d: (d / STATE_FILE).unlink(), STATE_FILE, "holds weights only"),
    "state of another kind": (lambda d: torch.save([1, 2], d / STATE_FILE), STATE_FILE, "not the trainer's state"),
    "state without rng": (lambda d: torch.save({"train_state": {"step": 6}}, d / STATE_FILE), STATE_FILE,
                          "lacks"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_an_error_or_a_fallback_naming_the_file(run_env, run_dir, damage):
    do, bad_file, reason = DAMAGE[damage]
    do(run_dir)
    with pytest.raises(ResumeError) as e:  # named explicitly: an error, with the way to fall back
        resume_point(run_env.config(run_dir.parent, f"resume={run_dir}"))
    assert str(run_dir / bad_file) in str(e.value) and reason in str(e.value)
    assert f"resume={run_dir.parent}" in str(e.value)
    with pytest.warns(ResumeWarning) as warned:  # the run's out_dir: the previous checkpoint, with a warning
        point = resume_point(run_env.config(run_dir.parent, f"resume={run_dir.parent}"))
    assert point.path.name == "step-0000004" and point.step == 4
    messages = [str(w.message) for w in warned]
    assert any(str(run_dir / bad_file) in m and reason in m for m in messages), messages
    assert any("resuming from the older checkpoint" in m and "step-0000004" in m for m in messages), messages


def test_every_checkpoint_damaged_is_an_error(run_env, run_dir):
    for d in run_dir.parent.iterdir():
        _truncate(d / MODEL_FILE)
    with pytest.warns(ResumeWarning), pytest.raises(ResumeError, match="every checkpoint in .* is damaged"):
        resume_point(run_env.config(run_dir.parent, f"resume={run_dir.parent}"))


def test_a_checkpoint_of_another_strategy_is_refused(run_env, run_dir):
    meta = json.loads((run_dir / META_FILE).read_text())
    meta["strategy"] = meta["config"]["strategy_name"] = "istlm_interleaved"
    (run_dir / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ResumeError, match="checkpoint of strategy 'istlm_interleaved', not 'adapter_stage1'"):
        resume_point(run_env.config(run_dir.parent, f"resume={run_dir}"))


def test_another_config_is_refused_naming_the_keys_but_free_keys_may_differ(run_env, run_dir):
    with pytest.raises(ResumeError) as e:
        resume_point(run_env.config(run_dir.parent, f"resume={run_dir}", "train.lr=0.5",
                                    "strategy.expansion_blocks=1"))
    msg = str(e.value)
    assert "train.lr: checkpoint 0.001, now 0.5" in msg and "strategy.expansion_blocks: checkpoint 2, now 1" in msg
    assert "repeat the original command" in msg
    point = resume_point(run_env.config(run_dir.parent, f"resume={run_dir}", "train.keep_checkpoints=1",
                                        "train.progress=true", "train.max_bad_steps=9", "train.checkpoint_every=3"))
    assert point.step == 6


def test_a_finished_run_has_nothing_to_resume(run_env, reference_run):
    result, ref_out, _ = reference_run
    for spec in (ref_out, result["run_id"], ref_out / "final"):
        with pytest.raises(ResumeError, match=f"run {result['run_id']} already finished all 8 steps"):
            resume_point(run_env.config(ref_out, f"resume={spec}"))


@pytest.mark.parametrize("spec, message", [
    ("/no/such/run", "no such checkpoint directory, out_dir or MLflow run id"),
    ("0123456789abcdef0123456789abcdef", "no such MLflow run in sqlite:///"),
    ("FILE", "is a file"),
    ("EMPTY", "holds no checkpoint"),
])
def test_unknown_resume_targets_say_what_to_pass(run_env, tmp_path, spec, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    spec = {"FILE": str(tmp_path / "file"), "EMPTY": str(tmp_path / "empty")}.get(spec, spec)
    with pytest.raises(ResumeError, match=message):
        resume_point(run_env.config(tmp_path / "out", f"resume={spec}"))


def test_a_run_still_training_elsewhere_is_left_alone(run_env, run_dir, capsys, reference_untouched):
    with RunLock(run_dir.parent):  # what a live training process holds on its out_dir
        assert main(cli(run_env, run_dir)) == 2
    err = capsys.readouterr().err
    assert "is in use by another process" in err and str(run_dir.parent) in err


def test_gatefusion_init_from_refuses_damaged_and_pickled_weights(tiny_core, run_dir, tmp_path):
    from s2s.strategies.gatefusion_stage2 import GateFusionStage2, GateFusionStage2Config

    def build(path):
        return GateFusionStage2(GateFusionStage2Config(init_from=str(path)), tiny_core)

    build(run_dir)  # the undamaged stage-1 checkpoint is accepted
    marker = tmp_path / "payload-ran"
    pickled = tmp_path / "pickled"
    shutil.copytree(run_dir, pickled)
    torch.save({"adapter.proj.0.weight": Payload(marker)}, pickled / MODEL_FILE)  # a pickle named .safetensors
    with pytest.raises(CheckpointError, match=rf"strategy\.init_from: .*{MODEL_FILE} cannot be read as safetensors"):
        build(pickled)
    assert not marker.exists()
    _truncate(run_dir / MODEL_FILE, 5000)
    with pytest.raises(CheckpointError, match=rf"strategy\.init_from: {run_dir / MODEL_FILE} cannot be read"):
        build(run_dir)
    (run_dir / META_FILE).unlink()
    with pytest.raises(CheckpointError, match="not an s2s checkpoint"):
        build(run_dir)
    assert issubclass(CheckpointError, UserError)
