"""One error type: a UserError is one line and exit 2 at every command; anything else is a bug and
keeps its traceback; the config machinery knows nothing of the modules whose errors it once listed."""
import ast
from pathlib import Path

import pytest

from evaluation import score
from experiments import compare, run, search
from s2s.errors import UserError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command, patch", [(run, "train"), (compare, "compare"), (search, "resolve"),
                                            (score, "score")])
def test_a_user_error_is_one_line_and_exit_2_anything_else_keeps_its_traceback(command, patch, monkeypatch,
                                                                                capsys):
    argv = {run: ["adapter_stage1"], compare: ["adapter_stage1", "--seeds", "1", "--score", "0"],
            search: ["adapter_stage1"], score: ["some/checkpoint"]}[command]

    def user_error(*a, **k):
        raise UserError("data.sources: no such dataset 'x'; point data.sources at a dataset directory")

    monkeypatch.setattr(command, patch, user_error)
    assert command.main(argv) == 2
    err = capsys.readouterr().err
    assert err == "error: data.sources: no such dataset 'x'; point data.sources at a dataset directory\n"

    def bug(*a, **k):
        raise ValueError("Expected input batch_size (3) to match target batch_size (2).")  # as torch says it

    monkeypatch.setattr(command, patch, bug)
    with pytest.raises(ValueError, match="batch_size"):
        command.main(argv)


def test_config_machinery_imports_no_trainer_backbones_or_tracking():
    tree = ast.parse((REPO / "s2s" / "config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not imported & {"s2s.trainer", "s2s.backbones", "s2s.tracking"}, imported


def test_gatefusion_rebuilds_stage1_through_the_validated_config_loader(tiny_core):
    from s2s.checkpoint import CheckpointError
    from s2s.strategies.gatefusion_stage2 import GateFusionStage2, GateFusionStage2Config

    cfg = GateFusionStage2Config()
    with pytest.raises(CheckpointError, match="'expansion_blockz'. Did you mean 'expansion_blocks'"):
        GateFusionStage2.from_checkpoint(cfg, tiny_core, {"stage1_config": {"expansion_blockz": 1}})
    with pytest.raises(CheckpointError, match=r"'expansion_blocks' = 0 is out of range"):
        GateFusionStage2.from_checkpoint(cfg, tiny_core, {"stage1_config": {"expansion_blocks": 0}})
