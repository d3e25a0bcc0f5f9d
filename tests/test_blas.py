"""import gradscope sets OpenBLAS's idle-thread timeout before numpy loads, and only then."""

import os
import subprocess
import sys

import pytest

from gradscope._blas import THREAD_TIMEOUT


def _timeout_seen(code: str, env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if env_value is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = env_value
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    return out.stdout.strip()


READ = "import os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset'))"


@pytest.mark.parametrize("first, user, expected", [
    ("import gradscope", None, THREAD_TIMEOUT),  # set before numpy loads OpenBLAS
    ("import gradscope", "9", "9"),  # the user's value is kept
    ("import numpy, gradscope", None, "unset"),  # too late to matter: left alone
])
def test_thread_timeout_set_only_before_numpy(first, user, expected):
    assert _timeout_seen(f"{first}; {READ}", user) == expected



def test_blas_threads_sets_and_restores_the_thread_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy as np  # noqa: F401

    from gradscope._blas import blas_threads

    def counts():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info()
                if i["internal_api"] == "openblas"]

    before = counts()
    if not before:
        pytest.skip("numpy is not linked to OpenBLAS here")
    with blas_threads(1):
        assert counts() == [1] * len(before)
    assert counts() == before
