"""dedup_frames (Orpheus' repeated-c0 frame removal) and its use in prepare's cached targets."""

from types import SimpleNamespace

import pytest
import torch

from s2s.tokens import FRAME, TokenError, TokenLayout, codes_to_tokens, dedup_frames

TINY = TokenLayout(tokeniser_length=512, start_of_text=1, end_of_text=2, codebook_size=256)


def _frames_to_codes(frames):
    """[(c0, (c1a, c1b), (c2a, c2b, c2c, c2d)), ...] -> [c0 [n], c1 [2n], c2 [4n]]."""
    return [torch.tensor([f[0] for f in frames], dtype=torch.long),
            torch.tensor([c for f in frames for c in f[1]], dtype=torch.long),
            torch.tensor([c for f in frames for c in f[2]], dtype=torch.long)]


def _orpheus_style(ids: list[int]) -> list[int]:
    """The published Orpheus loop, restated: keep a frame when its first id differs from the last kept one's."""
    result = ids[:FRAME]
    for i in range(FRAME, len(ids), FRAME):
        if ids[i] != result[-FRAME]:
            result.extend(ids[i:i + FRAME])
    return result


def _ids(frames) -> torch.Tensor:
    return codes_to_tokens(_frames_to_codes(frames), TINY)


def test_no_repeats_keeps_every_frame():
    ids = _ids([(1, (5, 6), (7, 8, 9, 10)), (2, (5, 6), (7, 8, 9, 10)), (1, (0, 0), (0, 0, 0, 0))])
    assert torch.equal(dedup_frames(ids), ids)  # A B A: only CONSECUTIVE repeats go


def test_a_repeated_c0_drops_the_frame_even_when_its_fine_codes_differ():
    frames = [(3, (1, 2), (1, 2, 3, 4)),
              (3, (9, 9), (9, 9, 9, 9)),  # same c0, different c1/c2: dropped (only k0 is compared)
              (3, (1, 2), (1, 2, 3, 4)),  # dropped
              (4, (1, 2), (1, 2, 3, 4)),
              (3, (7, 7), (7, 7, 7, 7))]  # differs from the previous (4): kept
    ids = _ids(frames)
    assert torch.equal(dedup_frames(ids), _ids([frames[0], frames[3], frames[4]]))
    assert dedup_frames(ids).tolist() == _orpheus_style(ids.tolist())


def test_frames_that_repeat_only_a_fine_code_are_kept():
    ids = _ids([(1, (5, 5), (5, 5, 5, 5)), (2, (5, 5), (5, 5, 5, 5))])
    assert torch.equal(dedup_frames(ids), ids)


def test_all_equal_collapses_to_the_first_frame_and_single_and_empty_pass_through():
    frames = [(8, (i, i + 1), (i, i, i, i)) for i in range(6)]
    assert torch.equal(dedup_frames(_ids(frames)), _ids(frames[:1]))
    assert torch.equal(dedup_frames(_ids(frames[:1])), _ids(frames[:1]))
    assert dedup_frames([]).tolist() == [] and dedup_frames(torch.zeros(0, dtype=torch.long)).dtype == torch.long


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_orpheus_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n = 200
    codes = [torch.randint(0, 3, (n,), generator=g),  # 3 coarse values: many runs
             torch.randint(0, 256, (2 * n,), generator=g), torch.randint(0, 256, (4 * n,), generator=g)]
    ids = codes_to_tokens(codes, TINY)
    before = ids.clone()
    out = dedup_frames(ids)
    assert out.tolist() == _orpheus_style(ids.tolist())
    assert torch.equal(ids, before)  # input untouched
    kept = out.view(-1, FRAME)[:, 0]
    assert (kept[1:] != kept[:-1]).all() and 0 < len(kept) < n


def test_malformed_input_is_a_token_error():
    with pytest.raises(TokenError, match="whole number"):
        dedup_frames(torch.arange(10))
    with pytest.raises(TokenError, match="1-D"):
        dedup_frames(torch.zeros(2, 7, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# prepare: the cache holds every frame; dedup is applied to what is read, in either order


class _FakeCore:
    """Just what prepare() touches when speech states are not cached; counts SNAC encodes."""

    def __init__(self):
        self.cfg = SimpleNamespace(snac="fake/snac", whisper="fake/whisper")
        self.layout = TINY
        self.encodes = 0

    def encode_codes(self, wave24k):
        self.encodes += 1
        n = len(wave24k)
        c0 = (wave24k.long() // 2)  # pairs of equal c0: 0 0 1 1 2 2 ...
        return [c0, torch.arange(2 * n) % 256, torch.arange(4 * n) % 256]

    def encode_codes_batch(self, waves24k):
        return [self.encode_codes(w) for w in waves24k]


def _examples(k=3):
    from s2s.data.loader import Example
    return [Example(f"key{i}", "t", "es", torch.zeros(16), torch.arange(6 + i, dtype=torch.float32))
            for i in range(k)]


@pytest.mark.parametrize("first", [True, False], ids=["dedup-first", "full-first"])
def test_prepare_never_serves_one_setting_the_others_targets(tmp_path, first):
    from s2s.prepare import CacheConfig, prepare

    core, examples = _FakeCore(), _examples()
    cfg = CacheConfig(dir=str(tmp_path), cache_speech_states=False)
    full_want = [codes_to_tokens(core.encode_codes(ex.target24k), TINY) for ex in examples]
    core.encodes = 0
    runs = {}
    for dedup in (first, not first, first):
        runs.setdefault(dedup, []).append(prepare(examples, core, cfg, progress=False, dedup_frames=dedup))
    assert core.encodes == len(examples)  # one SNAC pass serves both settings
    for items in runs[False]:
        assert all(torch.equal(it.speech_tokens, w) for it, w in zip(items, full_want))
    for items in runs[True]:
        for it, w in zip(items, full_want):
            assert torch.equal(it.speech_tokens, dedup_frames(w)) and len(it.speech_tokens) < len(w)
    # what sits on disk is the full target, whichever setting wrote it
    from safetensors.torch import load_file
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == len(examples)
    assert torch.equal(load_file(str(files[0]))["tokens"], full_want[0])
    # the cache off: same answers
    off = CacheConfig(dir=str(tmp_path / "off"), enabled=False, cache_speech_states=False)
    assert all(torch.equal(a.speech_tokens, b.speech_tokens) for a, b in
               zip(prepare(examples, core, off, progress=False, dedup_frames=True), runs[True][0]))


def test_data_config_option_defaults_on_and_can_be_turned_off():
    from s2s.data.loader import DataConfig
    from s2s.experiment_config import build_config

    assert DataConfig().dedup_frames is True
    assert build_config("adapter_stage1", "tiny").data.dedup_frames is True
    assert build_config("adapter_stage1", "tiny", ["data.dedup_frames=false"]).data.dedup_frames is False
