"""`experiments.compare` end to end on the tiny preset: the report (losses, ASR-WER/CER, toplines, the card's
figures), the plot, the MLflow parent/child runs with the scores on the children, reuse of finished runs
and of their scores, a staged strategy's whole step budget, and the upstream-stage check."""

import json
import math
import statistics

import pytest

from tests.core_fixtures import short_run

from experiments.compare import main

STRATEGIES = ["adapter_stage1", "istlm_interleaved"]
SCORE = ["--score", "2", "score.generation.max_new_tokens=21", "score.generation.batch_size=2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No MLFLOW_TRACKING_URI from outside, and a scratch working directory (nothing lands in the repo)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.chdir(tmp_path_factory.mktemp("compare_cwd"))
        yield


@pytest.fixture(scope="module")
def setup(env, tmp_path_factory, synth_dataset, tiny_backbone_cfg, tiny_core, prepared_cache_dir):
    root = tmp_path_factory.mktemp("compare")
    # One checkpoint folder for all runs: each needs its own inside it.
    overrides = short_run(synth_dataset, tiny_backbone_cfg, prepared_cache_dir, root / "mlruns", root / "checkpoints",
                          **{"train.max_steps": 2})
    return root, overrides, f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


def compare(setup, report: str, *extra: str, strategies=STRATEGIES, seeds: int = 2) -> int:
    root, overrides, _ = setup
    return main([*strategies, *overrides, *extra, "--seeds", str(seeds), "--out", str(root / report),
                 "--no-progress"])


def runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("s2s")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def cells_of(text: str, label: str) -> dict[str, str]:
    """The report row whose first cell is `label`, keyed by the table's headers."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    (row,) = [line for line in lines if line.split("|")[1].strip() == label]
    return dict(zip(head, (c.strip() for c in row.strip("|").split("|"))))


def mean_std(cell: str) -> tuple[float, float]:
    mean, std = (float(v) for v in cell.split("±"))
    return mean, std


@pytest.fixture(scope="module")
def first(setup):
    root, _, uri = setup
    assert compare(setup, "report", *SCORE) == 0
    _, all_runs = runs(uri)
    return root / "report", all_runs


def test_report_table(first):
    report, _ = first
    text = (report / "comparison.md").read_text()
    results = json.loads((report / "results.json").read_text())
    for name in STRATEGIES:
        cells = cells_of(text, name)
        assert sum("±" in c for c in cells.values()) >= 8  # losses, gaps, acc and the scores: mean ± std
        rs = [r for r in results if r["strategy"] == name]
        for column, key in (("train loss", "train_nll"), ("eval loss", "eval_loss"),
                            ("eval loss, shuffled audio", "shuffled_loss")):  # mean ± std over seeds
            mean, std = mean_std(cells[column])
            values = [r[key] for r in rs]
            assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values)
            assert mean == pytest.approx(statistics.mean(values), abs=1e-4)
            assert std == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert rs[0]["eval_loss"] != rs[1]["eval_loss"]  # two seeds, two different models
        assert cells["optimizer steps (total)"] == "2"  # a single-stage strategy: its own steps
    reported = [line for line in text.splitlines() if "(reported" in line]
    assert len(reported) == 2
    assert any("18.68" in line for line in reported) and any("23.94" in line for line in reported)
    assert "nats per target token" in text and "2 seed(s), 2 optimizer steps each" in text


def test_the_note_on_the_card_figures(first):
    text = (first[0] / "comparison.md").read_text()
    assert "cannot be per-token" not in text
    assert "normalization is unknown" in text and "no upper bound" in text
    assert "holds only if the logged loss excluded label smoothing" in text
    assert "0.1·ln(156940) = 1.20 per token" in text and "18.68/16 = 1.17" in text


def test_wer_cer_speaker_and_mos_columns_hold_numbers(first):
    report, _ = first
    text = (report / "comparison.md").read_text()
    results = json.loads((report / "results.json").read_text())
    for name in STRATEGIES:
        cells = cells_of(text, name)
        rs = [r for r in results if r["strategy"] == name]
        for column, figure in (("WER", "wer_pooled"), ("CER", "cer_pooled"), ("speaker similarity", "spk_sim_mean"),
                               ("MOS (DNSMOS OVRL)", "mos_dnsmos_mean")):
            mean, std = mean_std(cells[column])
            values = [r["scores"][figure] for r in rs]
            assert all(math.isfinite(v) and v >= (-1 if figure == "spk_sim_mean" else 0) for v in values)
            assert mean == pytest.approx(statistics.mean(values), abs=1e-4)
            assert std == pytest.approx(statistics.stdev(values), abs=1e-4)
        assert all(r["scores"]["n"] == 2 for r in rs)  # the same 2 utterances for every run
    assert "on the first 2 eval utterances" in text and "generated greedily" in text
    assert "speaker similarity, resemblyzer" in text and "'whisper' text normalizer" in text
    # the tiny preset says plainly what its figures are worth
    assert "Tiny preset, the miniature" in text and "random" in text and "nothing about the methods at full scale" in text


def test_the_frozen_tts_brackets_and_the_way_to_the_topline(first):
    """Each run scored the frozen LM given no text and given the transcript; the report shows both rows and
    each strategy's place between them."""
    report, _ = first
    text = (report / "comparison.md").read_text()
    results = json.loads((report / "results.json").read_text())
    floor_row = cells_of(text, "frozen TTS LM given no text (floor, untrained)")
    top_row = cells_of(text, "frozen TTS LM given the transcript (topline, untrained)")
    floors = [r["brackets"]["brackets/no_text/loss"] for r in results]
    tops = [r["brackets"]["brackets/text/loss"] for r in results]
    assert max(floors) - min(floors) < 1e-4 and max(tops) - min(tops) < 1e-4  # same utterances, same frozen LM
    assert mean_std(floor_row["eval loss"])[0] == pytest.approx(floors[0], abs=1e-4)
    assert mean_std(top_row["eval loss"])[0] == pytest.approx(tops[0], abs=1e-4)
    assert tops[0] < floors[0]  # the miniature's LM reads
    for name in STRATEGIES:
        rs = [r for r in results if r["strategy"] == name]
        way = [(r["brackets"]["brackets/no_text/loss"] - r["eval_loss"])
               / (r["brackets"]["brackets/no_text/loss"] - r["brackets"]["brackets/text/loss"]) for r in rs]
        cell = cells_of(text, name)["to text topline"]
        assert cell == f"{statistics.mean(way):.0%} ± {statistics.stdev(way):.0%}"


def test_toplines_are_rows_computed_once(first):
    report, _ = first
    text = (report / "comparison.md").read_text()
    toplines = json.loads((report / "toplines.json").read_text())
    assert sorted(t["system"] for t in toplines) == ["other_speaker", "reference", "snac_roundtrip"]
    for label in ("reference audio (topline)", "reference via SNAC (topline)"):
        cells = cells_of(text, label)
        wer, cer = float(cells["WER"]), float(cells["CER"])
        assert math.isfinite(wer) and wer >= 0 and math.isfinite(cer) and cer >= 0
        assert 1 <= float(cells["MOS (DNSMOS OVRL)"]) <= 5
        assert cells["eval loss"] == ""  # a property of the data, codec and ASR: no training figures
    # speaker similarity: the round trip and the other-speaker floor have it, the reference (itself) has not
    assert cells_of(text, "reference audio (topline)")["speaker similarity"] == ""
    assert -1 <= float(cells_of(text, "reference via SNAC (topline)")["speaker similarity"]) <= 1
    floor = cells_of(text, "another speaker's utterance (floor)")
    assert -1 <= float(floor["speaker similarity"]) <= 1 and floor["WER"] == "" and floor["MOS (DNSMOS OVRL)"] == ""
    # scored once, from the first run: only it wrote topline transcripts
    scored = sorted(p.name for p in (report / "scores").iterdir())
    assert scored == [f"{n}-seed{s}" for n in STRATEGIES for s in (0, 1)]
    with_toplines = [d for d in scored
                     if "reference" in json.loads((report / "scores" / d / "summary.json").read_text())["scores"]]
    assert with_toplines == ["adapter_stage1-seed0"]


def test_scores_are_logged_to_the_child_runs(first, setup):
    report, _ = first
    client, all_runs = runs(setup[2])
    results = json.loads((report / "results.json").read_text())
    for r in results:
        run = client.get_run(r["run_id"])
        assert run.data.metrics["eval/wer_pooled"] == pytest.approx(r["scores"]["wer_pooled"])
        assert run.data.metrics["eval/cer_pooled"] == pytest.approx(r["scores"]["cer_pooled"])
        assert run.data.metrics["eval/spk_sim"] == pytest.approx(r["scores"]["spk_sim_mean"])
        history = client.get_metric_history(r["run_id"], "eval/wer")
        assert [m.step for m in history] == [2]  # at the checkpoint's step, beside the losses
        assert "eval/loss" in run.data.metrics and run.info.status == "FINISHED"
        has_toplines = "eval/reference/wer_pooled" in run.data.metrics
        assert has_toplines == (r["strategy"] == "adapter_stage1" and r["seed"] == 0)
    (parent,) = [r for r in all_runs if "s2s.compare" in r.data.tags]
    assert "istlm_interleaved/wer_pooled_mean" in parent.data.metrics
    assert "topline/snac_roundtrip/wer_pooled" in parent.data.metrics
    assert "adapter_stage1/spk_sim_mean_mean" in parent.data.metrics
    assert "topline/other_speaker/spk_sim_mean" in parent.data.metrics


def test_report_plot_and_json(first, setup):
    report, _ = first
    png = report / "eval_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    results = json.loads((report / "results.json").read_text())
    assert sorted((r["strategy"], r["seed"]) for r in results) == [(n, s) for n in STRATEGIES for s in (0, 1)]
    for r in results:
        assert [step for step, _ in r["history"]] == [0, 1, 2]  # eval every step
        assert r["history"][-1][1] == pytest.approx(r["eval_loss"], rel=1e-5)  # the final checkpoint's eval
        assert r["steps"] == r["total_steps"] == 2 and len(r["budget"]) == 1
    # every run has its own checkpoint, holding its own strategy
    assert len({r["checkpoint"] for r in results}) == 4
    assert all(r["checkpoint"].startswith(str(setup[0] / "checkpoints")) for r in results)  # in the chosen folder
    for r in results:
        meta = json.loads(open(f"{r['checkpoint']}/meta.json").read())
        assert meta["strategy"] == r["strategy"] and meta["config"]["train"]["seed"] == r["seed"]


def test_mlflow_parent_and_children(first, setup):
    report, all_runs = first
    parents = [r for r in all_runs if "s2s.compare" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["s2s.compare"] == " vs ".join(STRATEGIES)
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 == len(all_runs) - 1
    assert sorted((c.data.tags["s2s.strategy"], c.data.params["train.seed"]) for c in children) == \
        [(n, s) for n in STRATEGIES for s in ("0", "1")]
    assert all(c.info.status == "FINISHED" for c in children)
    client, _ = runs(setup[2])
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.md", "eval_loss.png", "results.json", "toplines.json"} <= artifacts
    assert "adapter_stage1/eval_loss_mean" in parent.data.metrics


def test_second_identical_compare_reuses_finished_runs_and_their_scores(first, setup, capsys):
    report, before = first
    _, _, uri = setup
    capsys.readouterr()
    assert compare(setup, "report2", *SCORE) == 0
    assert capsys.readouterr().out.count("reusing the scores of run") == 4
    _, after = runs(uri)
    new = {r.info.run_id for r in after} - {r.info.run_id for r in before}
    assert len(new) == 1  # only the new parent run: no child was trained again
    (parent,) = [r for r in after if r.info.run_id in new]
    assert "s2s.compare" in parent.data.tags
    assert not [r for r in after if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # the reused runs are the right ones: their checkpoints evaluate exactly as before
    old = {(r["strategy"], r["seed"]): r for r in json.loads((report / "results.json").read_text())}
    again = json.loads((report.parent / "report2" / "results.json").read_text())
    assert len(again) == 4
    for r in again:
        o = old[(r["strategy"], r["seed"])]
        assert r["run_id"] == o["run_id"] and r["checkpoint"] == o["checkpoint"]
        assert r["eval_loss"] == pytest.approx(o["eval_loss"], abs=1e-5)
        assert r["shuffled_loss"] == pytest.approx(o["shuffled_loss"], abs=1e-5)
        assert r["scores"] == o["scores"]  # scored before with the same settings: not scored again
    assert not (report.parent / "report2" / "scores").exists()
    text = (report.parent / "report2" / "comparison.md").read_text()
    assert cells_of(text, "reference audio (topline)")["WER"] == \
        cells_of((report / "comparison.md").read_text(), "reference audio (topline)")["WER"]


def test_scoring_off_says_so(first, setup):
    root = setup[0]
    assert compare(setup, "report_noscore", "--score", "0", strategies=["istlm_interleaved"], seeds=1) == 0
    text = (root / "report_noscore" / "comparison.md").read_text()
    assert cells_of(text, "istlm_interleaved")["WER"] == "not scored"
    # no scored topline rows (reference audio, codec round trip); the frozen-LM brackets are no scores
    assert "(topline)" not in text and not (root / "report_noscore" / "toplines.json").exists()


def test_a_staged_strategy_states_its_whole_budget(first, setup):
    """gatefusion_stage2 trains 3 steps on top of the same seed's 2-step adapter_stage1 run (reused)."""
    root = setup[0]
    assert compare(setup, "report_staged", "--score", "0", "gatefusion_stage2:train.max_steps=3",
                   strategies=["adapter_stage1", "gatefusion_stage2"], seeds=1) == 0
    text = (root / "report_staged" / "comparison.md").read_text()
    assert cells_of(text, "adapter_stage1")["optimizer steps (total)"] == "2"
    assert cells_of(text, "gatefusion_stage2")["optimizer steps (total)"] == "5 (3 here + 2 of adapter_stage1)"
    assert "the steps column gives the whole budget" in text
    (stage2,) = [r for r in json.loads((root / "report_staged" / "results.json").read_text())
                 if r["strategy"] == "gatefusion_stage2"]
    stage1 = json.loads((root / "report" / "results.json").read_text())[0]
    assert stage1["strategy"] == "adapter_stage1" and stage1["seed"] == 0
    assert stage2["total_steps"] == 5 and stage2["budget"][1]["checkpoint"] == stage1["checkpoint"]
    # init_from given by the user: the stage-1 checkpoint's meta.json gives its steps
    assert compare(setup, "report_given", "--score", "0", "gatefusion_stage2:train.max_steps=3",
                   f"gatefusion_stage2:strategy.init_from={stage1['checkpoint']}",
                   strategies=["gatefusion_stage2"], seeds=1) == 0
    text = (root / "report_given" / "comparison.md").read_text()
    assert cells_of(text, "gatefusion_stage2")["optimizer steps (total)"] == "5 (3 here + 2 of adapter_stage1)"


def test_gatefusion_without_stage1_or_init_from_exits_2(setup, capsys, tmp_path):
    root, overrides, _ = setup
    rc = main(["gatefusion_stage2", "istlm_interleaved", *overrides, "--out", str(tmp_path / "r"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "gatefusion_stage2 trains on top of a checkpoint of adapter_stage1" in err
    assert "gatefusion_stage2:strategy.init_from=" in err
    assert not (tmp_path / "r").exists()  # it stopped before training or writing anything


def test_bad_score_settings_exit_2_before_anything_runs(setup, capsys, tmp_path):
    root, overrides, _ = setup
    rc = main(["istlm_interleaved", *overrides, "score.generation.temprature=0", "--out", str(tmp_path / "r"),
               "--no-progress"])
    assert rc == 2
    assert "generation.temperature" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
