"""Shared pytest fixtures."""

import pytest
pytest_plugins = ["tests.core_fixtures", "tests.run_fixtures"]


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """A 12-utterance es+it espeak-ng dataset on disk (built once per session) -> its Path."""
    from s2s.data.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("data") / "synth", ["es", "it"], n=12, seed=0,
                              progress=False)
