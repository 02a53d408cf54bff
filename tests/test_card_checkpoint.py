"""Plain `.pt` weights (the design card's `{"adapter": state_dict, "expansion": state_dict}`):
`python -m s2s.export`, scoring a `.pt` with `--strategy`, and what is refused and how it is named.

One short adapter_stage1 run on the tiny preset (module fixture) provides real weights; the checks
that need no scoring load into a strategy built on the session's tiny core.
"""
from __future__ import annotations

import json
import shlex

import pytest
import torch

from evaluation.score import main as score_main
from s2s.checkpoint import CheckpointError, load_checkpoint, load_state_file
from s2s.export import main as export_main
from tests.test_run_mlflow import overrides as run_overrides
from tests.test_score import Payload

STRATEGY = "adapter_stage1"
# Only the teacher-forced figures are compared: two utterances, no toplines, and one generated token
# (less than a 7-token frame, so no audio and no ASR, which would take most of the time).
SCORE_ARGS = ["--n", "2", "--no-progress", "toplines=false", "generation.max_new_tokens=1", "generation.batch_size=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_dataset, tiny_backbone_cfg, tiny_core, prepared_cache_dir):
    """(checkpoint dir, run id, overrides that point a .pt's config at the same data, cache and store).

    One expansion block instead of the preset's two: the exported score command must carry the
    dimensions that differ from the preset."""
    from s2s.experiment import train
    from s2s.experiment_config import build_config

    root = tmp_path_factory.mktemp("card_mlflow")
    out = tmp_path_factory.mktemp("card_run") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = build_config(STRATEGY, "tiny", run_overrides(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, root,
                                                           out, **{"train.max_steps": 2,
                                                                   "strategy.expansion_blocks": 1}))
        result = train(cfg, progress=False)
    # (the session's tiny backbones, named explicitly as the run named them)
    same_data = [f"backbones.{k}={getattr(tiny_backbone_cfg, k)}" for k in ("whisper", "orpheus", "snac")]
    same_data += [f"data.sources={synth_dataset}", "data.eval_size=4", "synth_if_missing=0", "backbones.device=cpu",
                  f"cache.dir={prepared_cache_dir}", f"tracking.root={root}"]
    return result["checkpoint"], result["run_id"], same_data


@pytest.fixture
def model(tiny_core):
    """A fresh tiny adapter_stage1 with one expansion block (the `trained` architecture), on the session core."""
    from s2s.experiment_config import build_config, strategy_class

    cfg = build_config(STRATEGY, "tiny", ["strategy.expansion_blocks=1"])
    return strategy_class(STRATEGY)(cfg.strategy, tiny_core)


def card_dict(weights: dict, modules=("adapter", "expansion")) -> dict:
    """Flat s2s weights -> the card's {module: state_dict} for the given top-level modules."""
    return {m: {k[len(m) + 1:]: v for k, v in weights.items() if k.startswith(m + ".")} for m in modules}


def _run(main, args, capsys):
    """(exit code, stdout, stderr's last line): an error is one line, after any loader's progress bars."""
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    if code != 0:  # the one-line error is the last line, and the only one
        assert lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1, lines
    return code, captured.out, lines[-1] if lines else ""


def test_export_then_score_gives_the_checkpoints_teacher_forced_loss(trained, tmp_path, capsys):
    ckpt, run_id, same_data = trained
    pt = tmp_path / "finetune_stage1.pt"
    code, out, err = _run(export_main, [str(ckpt), str(pt)], capsys)
    assert code == 0, err
    card = torch.load(pt, map_location="cpu", weights_only=True)  # tensors only: loads without unpickling code
    assert set(card) == {"adapter", "expansion"}
    # the card's SpeechAdapter layout as it is: Linear (proj.0), GELU, Linear (proj.2), LayerNorm (proj.3)
    assert set(card["adapter"]) == {f"proj.{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")}
    weights, _ = load_checkpoint(ckpt)
    assert all(torch.equal(card["expansion"][k[len("expansion."):]], v) for k, v in weights.items()
               if k.startswith("expansion."))

    # The printed command carries the strategy and what differs from the preset (dimensions, backbones).
    command = next(line for line in out.splitlines() if line.startswith("score it with: "))
    args = shlex.split(command[len("score it with: "):])[3:]
    assert args[:3] == [str(pt), "--strategy", STRATEGY] and "strategy.expansion_blocks=1" in args

    code, _, err = _run(score_main, [str(ckpt), *SCORE_ARGS, "--out", str(tmp_path / "dir")], capsys)
    assert code == 0, err
    code, report, err = _run(score_main, [*args, *same_data, *SCORE_ARGS, "--out", str(tmp_path / "pt")], capsys)
    assert code == 0, err
    from_dir = json.loads((tmp_path / "dir" / "summary.json").read_text())
    from_pt = json.loads((tmp_path / "pt" / "summary.json").read_text())
    assert from_pt["teacher_forced"]["eval/tf/loss"] == from_dir["teacher_forced"]["eval/tf/loss"]
    assert from_pt["teacher_forced"] == from_dir["teacher_forced"]  # every position's loss and accuracy
    # A .pt has no run and no step: a new MLflow run, step None, the file named as the checkpoint.
    assert from_pt["step"] is None and from_pt["strategy"] == STRATEGY and from_pt["checkpoint"] == str(pt)
    assert from_pt["mlflow_run_id"] not in (None, run_id) and from_dir["mlflow_run_id"] == run_id
    assert "step None" in report


def test_a_pt_without_strategy_says_to_pass_one(tmp_path, model, capsys):
    pt = tmp_path / "ckpt.pt"
    torch.save(card_dict(model.trainable_state_dict()), pt)
    code, _, err = _run(score_main, [str(pt), "--no-progress"], capsys)
    from s2s.strategies import STRATEGIES

    assert code == 2 and "--strategy NAME" in err and all(name in err for name in STRATEGIES)


def test_an_adapter_only_card_loads_the_adapter_and_names_the_missing_expansion(trained, tmp_path, model, capsys):
    from s2s.card_layout import expected_tensors, fit_state

    ckpt, _, same_data = trained
    weights, _ = load_checkpoint(ckpt)
    pt = tmp_path / "adapter_only.pt"
    torch.save(card_dict(weights, ["adapter"]), pt)

    fit = fit_state(load_state_file(pt), expected_tensors(model))  # the adapter's names and shapes fit as is
    adapter = [n for n in weights if n.startswith("adapter.")]
    assert adapter and sorted(fit.weights) == sorted(adapter)
    assert all(torch.equal(fit.weights[n], weights[n]) for n in adapter)
    expansion = sorted(n for n in expected_tensors(model) if n.startswith("expansion."))
    assert fit.missing == expansion and not fit.unexpected and not fit.wrong_shape

    code, _, err = _run(score_main, [str(pt), "--strategy", STRATEGY, "strategy.expansion_blocks=1", *same_data,
                                     "--no-progress"], capsys)
    assert code == 2
    assert f"adapter: all {len(adapter)} tensors fit" in err and f"missing {len(expansion)}," in err
    assert "expansion: checkpoint has 0 tensors [] vs model" in err
    shapes = expected_tensors(model)
    assert all(f"{n} ({', '.join(map(str, shapes[n]))})" in err for n in expansion)  # each name with its shape


def test_a_mis_shaped_tensor_lists_checkpoint_and_model_shapes(trained, model):
    from s2s.card_layout import load_state

    weights, _ = load_checkpoint(trained[0])
    name = "adapter.proj.0.weight"
    good = tuple(weights[name].shape)
    weights[name] = weights[name][:, :-5]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(CheckpointError) as e:
        load_state(model, weights, "card.pt")
    bad = (good[0], good[1] - 5)
    msg = str(e.value)
    assert f"{name}: checkpoint {bad} vs model {good}" in msg and "does not fit strategy 'adapter_stage1'" in msg
    # the whole module, both sides, so that a user sees what would need mapping
    assert "adapter: wrong shapes" in msg and "checkpoint has 6 tensors [adapter.proj.0.bias" in msg
    assert f"{name} {bad}" in msg and "vs model 6 [" in msg and f"{name} {good}" in msg
    assert "expansion: all" in msg and "\n" not in msg  # the fitting module is one phrase; one line in all
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # strict: nothing was loaded


def test_a_flat_state_dict_loads_as_is(trained, tmp_path, model):
    from s2s.card_layout import load_state

    weights, _ = load_checkpoint(trained[0])
    pt = tmp_path / "flat.pt"
    torch.save(weights, pt)
    fit = load_state(model, load_state_file(pt), str(pt))
    assert fit.ok and not fit.renamed
    assert all(torch.equal(t, weights[n]) for n, t in model.trainable_state_dict().items())


def test_a_pickle_payload_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "executed"
    pt = tmp_path / "ckpt.pt"
    torch.save({"adapter": {"proj.0.weight": Payload(marker)}}, pt)
    code, _, err = _run(score_main, [str(pt), "--strategy", STRATEGY, "--no-progress"], capsys)
    assert code == 2 and "refused without unpickling it" in err and str(pt) in err
    assert not marker.exists()
    # export reads only s2s checkpoint directories (safetensors): a .pt is refused before it is opened
    code, _, err = _run(export_main, [str(pt), str(tmp_path / "out.pt")], capsys)
    assert code == 2 and "plain weights file" in err and not (tmp_path / "out.pt").exists()
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    ([torch.zeros(2)], "holds a list, not a mapping"),
    ({"adapter": {"proj.0.weight": torch.zeros(2), "step": 3}}, "'adapter.step' is a int, not a tensor"),
    ({"adapter.w": torch.zeros(1), "adapter": {"w": torch.zeros(1)}}, "'adapter.w' is given twice"),
    ({}, "holds no tensors"),
])
def test_what_is_not_a_state_dict_of_tensors_is_named(tmp_path, content, message):
    pt = tmp_path / "odd.pt"
    torch.save(content, pt)
    with pytest.raises(CheckpointError, match=message):
        load_state_file(pt)


def test_garbage_bytes_name_the_file(tmp_path):
    pt = tmp_path / "garbage.pt"
    pt.write_bytes(b"not a torch file" * 10)
    with pytest.raises(CheckpointError, match=f"{pt} cannot be loaded safely"):
        load_state_file(pt)


def test_resume_and_init_from_refuse_a_pt_in_one_line(tmp_path, model):
    from s2s.resume import ResumeError, locate

    pt = tmp_path / "ckpt.pt"
    torch.save(card_dict(model.trainable_state_dict()), pt)
    with pytest.raises(ResumeError, match="is a file"):  # no optimizer state or step to continue from
        locate(str(pt), "sqlite:///unused.db")
    with pytest.raises(CheckpointError, match="plain weights file.*no meta.json") as e:  # what init_from reads
        load_checkpoint(pt)
    assert "\n" not in str(e.value)


def test_a_top_level_module_is_found_where_the_model_nests_it():
    from s2s.card_layout import fit_state

    expected = {"stage1.adapter.w": (2,), "stage1.expansion.w": (3,), "gate.weight": (1,)}
    fit = fit_state({"adapter.w": torch.zeros(2), "expansion.w": torch.zeros(3)}, expected)
    assert fit.renamed == {"adapter": "stage1.adapter", "expansion": "stage1.expansion"}
    assert sorted(fit.weights) == ["stage1.adapter.w", "stage1.expansion.w"] and not fit.wrong_shape
    assert fit.missing == ["gate.weight"]
    # ambiguous (two modules called "adapter"): left as it is, and named as unexpected
    fit = fit_state({"adapter.w": torch.zeros(2)}, {"a.adapter.w": (2,), "b.adapter.w": (2,)})
    assert not fit.renamed and fit.unexpected == ["adapter.w"]


def test_a_stage2_pt_loads_without_its_stage1_checkpoint(trained, tmp_path, tiny_core, tiny_backbone_cfg):
    """A strategy with an upstream stage: the .pt holds that stage's weights too, so no init_from is needed."""
    from s2s.card_layout import card_layout
    from s2s.checkpoint import save_checkpoint
    from s2s.experiment import load_trained
    from s2s.experiment_config import as_dict, build_config, strategy_class

    name = "gatefusion_stage2"
    stage1 = build_config(STRATEGY, "tiny")  # the preset's stage 1 (two blocks), as the stand-in will be
    torch.manual_seed(1)
    ckpt = save_checkpoint(tmp_path / "stage1", strategy_class(STRATEGY)(stage1.strategy, tiny_core)
                           .trainable_state_dict(), {"strategy": STRATEGY, "config": as_dict(stage1)})
    cfg = build_config(name, "tiny", [f"strategy.init_from={ckpt}"])
    torch.manual_seed(2)
    stage2 = strategy_class(name)(cfg.strategy, tiny_core)
    with torch.no_grad():
        for p in stage2.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # away from any initialisation
    pt = tmp_path / "stage2.pt"
    torch.save(card_layout(stage2.trainable_state_dict()), pt)
    backbones = [f"backbones.{k}={getattr(tiny_backbone_cfg, k)}" for k in ("whisper", "orpheus", "snac")]
    _, _, loaded, meta = load_trained(str(pt), [f"strategy_name={name}", "backbones.device=cpu", *backbones])
    assert meta["step"] is None and meta["config"]["strategy"]["init_from"] == ""
    expected = stage2.trainable_state_dict()
    assert expected.keys() == loaded.trainable_state_dict().keys()
    assert all(torch.equal(t, expected[n]) for n, t in loaded.trainable_state_dict().items())
