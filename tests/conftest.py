"""Shared pytest fixtures."""

import pytest
pytest_plugins = ["tests.core_fixtures", "tests.run_fixtures"]


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A 12-utterance es+it espeak-ng dataset on disk (built once per session) -> its Path: miniature
    speech, as the tiny preset synthesizes (the speech the tiny TTS model reads), of 4-5 words (8 or
    10 SNAC frames: tests clip targets from frame 5)."""
    from s2s.data.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("data") / "synth", ["es", "it"], n=12, seed=0,
                              progress=False, style="miniature", min_words=4, max_words=5)


@pytest.fixture(scope="session")
def varied_dataset(tmp_path_factory):
    """12 utterances of varied speech: sentences in random voices, rates and pitches -> its Path."""
    from s2s.data.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("data") / "varied", ["es", "it"], n=12, seed=0,
                              progress=False)
