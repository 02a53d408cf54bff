"""Generation: decoders equal the training forward, KV caches equal recomputation, sampling rules.

The decoder properties are checked for every registered strategy (`STRATEGIES`), each built by the
generic `tiny_model` fixture (tests/core_fixtures.py): a new strategy is covered without editing this file."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from s2s.generate import GenerationConfig, Generated, allowed_ids, generate, tokens_to_audio
from s2s.strategies import STRATEGIES
from s2s.tokens import FRAME, ORPHEUS

GREEDY = dict(temperature=0.0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def ragged_items(prepared_items):
    """Three eval utterances, targets cut to 3, 5 and 6 frames: different audio and target lengths.
    (No length is a multiple of istlm's 12-token chunk: see test_teacher_forced_decoder_equals_forward.)"""
    return [dataclasses.replace(it, speech_tokens=it.speech_tokens[:FRAME * n])
            for it, n in zip(prepared_items[8:11], (3, 5, 6))]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_teacher_forced_decoder_equals_forward(name, tiny_model, ragged_items, make_batch):
    """Feeding the reference tokens through the cached decoder gives the training forward's logits,
    for every sample of a left-padded batch: generation sees the sequence training saw.
    (istlm: when the speech ends exactly at a chunk boundary with input left, training reads
    end_of_speech at the last speech token and generation after the next input chunk.)"""
    model, batch = tiny_model(name)[1], make_batch(ragged_items)
    with torch.no_grad():
        reference = model(batch)
        decoder = model.decoder(batch)
        steps = [decoder.start()]
        for j in range(max(len(s) for s in batch.speech_tokens)):
            steps.append(decoder.step(torch.stack([s[min(j, len(s) - 1)] for s in batch.speech_tokens])))
    for i, speech in enumerate(batch.speech_tokens):
        expected = reference.logits[reference.sample == i]
        got = torch.stack([steps[t][i] for t in range(len(speech) + 1)])
        assert expected.shape == got.shape
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_greedy_with_caches_equals_recomputation(name, tiny_model, ragged_items, make_batch):
    model, batch = tiny_model(name)[1], make_batch(ragged_items)
    # min_new_tokens: the miniature's LM reads, and may end a short utterance within a frame or two
    cached = generate(model, batch, GenerationConfig(max_new_tokens=40, min_new_tokens=21, **GREEDY))
    recomputed = generate(model, batch, GenerationConfig(max_new_tokens=40, min_new_tokens=21, use_cache=False,
                                                         **GREEDY))
    assert cached.steps == recomputed.steps > 14
    for a, b in zip(cached.tokens, recomputed.tokens):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_sample_generates_the_same_alone_and_in_a_batch(name, tiny_model, ragged_items, make_batch):
    model, cfg = tiny_model(name)[1], GenerationConfig(max_new_tokens=16, **GREEDY)  # 2 frames and then some
    together = generate(model, make_batch(ragged_items), cfg)
    for i, item in enumerate(ragged_items):
        alone = generate(model, make_batch([item]), cfg)
        assert torch.equal(alone.tokens[0], together.tokens[i])


def test_constrained_tokens_fit_their_frame_position_and_decode(tiny_model, ragged_items, make_batch, tiny_core):
    out = generate(tiny_model("istlm_interleaved")[1], make_batch(ragged_items[:2]),
                   GenerationConfig(max_new_tokens=3 * FRAME, temperature=1.0, top_p=1.0))
    layout = tiny_core.layout
    for tokens in out.tokens:
        position = (tokens - layout.audio_offset) // layout.codebook_size
        assert torch.equal(position, torch.arange(len(tokens)) % FRAME)
        wave, dropped = tokens_to_audio(tiny_core, tokens)
        assert dropped == 0 and len(wave) == 2048 * (len(tokens) // FRAME)


def test_sampling_is_reproducible_by_seed(tiny_model, ragged_items, make_batch):
    batch, model = make_batch(ragged_items[:2]), tiny_model("adapter_stage1")[1]
    sample = lambda seed: generate(model, batch,  # noqa: E731
                                   GenerationConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=seed)).tokens
    a, b, c = sample(1), sample(1), sample(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


# --- the sampling loop, on a scripted decoder ------------------------------------------------

class ScriptedModel:
    """A stand-in strategy whose decoder prefers end_of_speech after `stop_after[i]` tokens for sample i."""

    training = False

    def __init__(self, stop_after: list[int], vocab: int = ORPHEUS.audio_offset + 7 * 4096):
        self.stop_after, self.vocab = stop_after, vocab
        self.core = type("Core", (), {"layout": ORPHEUS, "device": torch.device("cpu")})()
        self.fed = []

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def decoder(self, batch, use_cache=True):
        model = self

        class Scripted:
            t = 0

            def logits(self):
                out = torch.zeros(len(model.stop_after), model.vocab)
                out[:, ORPHEUS.audio_offset + (self.t % FRAME) * 4096 + 5] = 5.0  # code 5 at this position,
                out[:, ORPHEUS.audio_offset + (self.t % FRAME) * 4096 + 6] = 4.0  # then code 6
                for i, n in enumerate(model.stop_after):
                    if self.t >= n:
                        out[i, ORPHEUS.end_of_speech] = 10.0
                return out

            def start(self):
                return self.logits()

            def step(self, tokens):
                model.fed.append(tokens.clone())
                self.t += 1
                return self.logits()
        return Scripted()


def test_each_sample_stops_at_end_of_speech_and_finished_ones_idle():
    model = ScriptedModel([7, 3, 50])
    out = generate(model, [0, 1, 2], GenerationConfig(max_new_tokens=14, **GREEDY))
    assert isinstance(out, Generated)
    # sample 1 wants to stop after 3 tokens but end_of_speech is only allowed between frames
    assert [len(t) for t in out.tokens] == [7, 7, 14]
    assert out.stopped == [True, True, False]
    assert out.steps == 14
    assert all(int(f[0]) == ORPHEUS.end_of_speech for f in model.fed[7:])  # a finished sample is fed end_of_speech


def test_unconstrained_sampling_may_stop_anywhere():
    out = generate(ScriptedModel([3]), [0], GenerationConfig(max_new_tokens=14, constrain=False, **GREEDY))
    assert len(out.tokens[0]) == 3 and out.stopped == [True]


def test_repetition_penalty_discourages_repeats():
    # Position 0's favourite (code 5, logit 5) was generated a frame ago; penalty 2 halves it
    # below code 6 (logit 4) in the second frame.
    model = ScriptedModel([50])
    plain = generate(model, [0], GenerationConfig(max_new_tokens=8, **GREEDY)).tokens[0]
    penalized = generate(model, [0], GenerationConfig(max_new_tokens=8, temperature=0.0,
                                                      repetition_penalty=2.0)).tokens[0]
    assert plain[7] == plain[0] == ORPHEUS.audio_offset + 5
    assert penalized[0] == ORPHEUS.audio_offset + 5 and penalized[7] == ORPHEUS.audio_offset + 6


def test_allowed_ids_cover_one_codebook_and_end_between_frames():
    ok0 = allowed_ids(ORPHEUS, 0, ORPHEUS.audio_end, "cpu")
    ok3 = allowed_ids(ORPHEUS, 3, ORPHEUS.audio_end, "cpu")
    assert int(ok0.sum()) == 4096 + 1 and bool(ok0[ORPHEUS.end_of_speech])
    assert int(ok3.sum()) == 4096 and not bool(ok3[ORPHEUS.end_of_speech])
    assert bool(ok3[ORPHEUS.audio_offset + 3 * 4096]) and not bool(ok3[ORPHEUS.audio_offset + 2 * 4096])


def test_tokens_to_audio_drops_broken_frames(tiny_core):
    layout = tiny_core.layout
    frame = [layout.audio_offset + k * layout.codebook_size + 1 for k in range(FRAME)]
    wave, dropped = tokens_to_audio(tiny_core, torch.tensor(frame + [layout.end_of_speech] + frame + frame[:3]))
    assert dropped == 4 and len(wave) == 2 * 2048
    empty, dropped = tokens_to_audio(tiny_core, torch.tensor(frame[:5]))
    assert empty.numel() == 0 and dropped == 5


def test_min_new_tokens_masks_end_of_speech_until_reached():
    out = generate(ScriptedModel([0]), [0], GenerationConfig(max_new_tokens=30, min_new_tokens=10, **GREEDY))
    assert len(out.tokens[0]) == 14 and out.stopped == [True]  # the first frame boundary at or after 10
