"""instructjax as an installed package: a wheel built from this tree carries the default
config, and its programs run from a directory that is not the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_runs_outside_the_repository(tmp_path):
  # As `pip install .` builds it: in an isolated environment with the build requirements
  # of pyproject.toml, fetched from the package index.
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                  "-q", "-w", str(tmp_path / "dist"), REPO], check=True, timeout=300,
                 capture_output=True)
  (wheel,) = (tmp_path / "dist").iterdir()
  site = tmp_path / "site"
  with zipfile.ZipFile(wheel) as archive:
    assert "instructjax/configs/instructgpt_tiny.py" in archive.namelist()
    archive.extractall(site)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()

  def python(code: str, *args: str) -> subprocess.CompletedProcess:
    # -I -S: neither the working directory nor site-packages' .pth files (the editable
    # install's path hook) on the path; the dependencies, then the unpacked wheel first.
    boot = ("import site, sys; sys.path += site.getsitepackages(); "
            f"sys.path.insert(0, {str(site)!r}); ")
    return subprocess.run([sys.executable, "-I", "-S", "-c", boot + code, *args],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})

  probe = python("import instructjax.config as c; print(c.__file__, c.load_config().ppo.lr)")
  assert probe.returncode == 0, probe.stderr[-2000:]
  where, lr = probe.stdout.split()
  assert where.startswith(str(site)) and float(lr) > 0
  dry = python("import runpy; runpy.run_module('instructjax.dry_run', run_name='__main__')",
               "--mode=lower", "--steps=sft_step")
  assert dry.returncode == 0, dry.stderr[-2000:]
  assert "sft_step" in dry.stdout and "(not compiled)" in dry.stdout
