"""The clients shipped with the server: spanserve-cli and the Python example."""
import os
import subprocess

from server_harness import BUILD, CLI_BIN, PYTHON, REPO, request


def run_cli(server, *args):
    return subprocess.run([str(CLI_BIN), "--address", server.address, *args],
                          capture_output=True, timeout=60)


def test_cli_streams_the_generation(server):
    unary = server.stub().Generate(request(max_tokens=30, ignore_eos=True, temperature=0.8,
                                           seed=42), timeout=60)
    result = run_cli(server, "((3+4)*(5-2))+6=", "--max-tokens", "30", "--ignore-eos",
                     "--temperature", "0.8", "--seed", "42", "--joined")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == unary.text
    summary = result.stderr.decode()
    assert "finish: length" in summary and "generated tokens: 30" in summary
    assert "seed: 42" in summary


def test_cli_show_spans(server):
    result = run_cli(server, "((3+4)*(5-2))+6=", "--max-tokens", "10", "--show-spans")
    assert result.returncode == 0, result.stderr
    summary = result.stderr.decode()
    assert "segments:" in summary and "0 prompt: ((3+4)*(5-2))+6=" in summary
    assert "attention: read" in summary


def test_cli_model_info(server):
    result = run_cli(server, "--info")
    assert result.returncode == 0
    assert "vocab 320, context 1024" in result.stdout.decode()


def test_cli_reports_errors(server):
    result = run_cli(server, "1+1=", "--max-tokens", "0")
    assert result.returncode == 1
    assert "max_tokens" in result.stderr.decode()


def test_python_example(server):
    env = dict(os.environ, SPANSERVE_BUILD_DIR=str(BUILD))
    result = subprocess.run([PYTHON, str(REPO / "examples/python_client.py"), "1+2=",
                             "--address", server.address, "--max-tokens", "12", "--seed", "1"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert "segment 0 (prompt)" in result.stdout
    assert "KV blocks read" in result.stdout
