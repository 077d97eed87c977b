"""Importing streamfm changes no global state of numba; its kernels still cache in a
directory per hash of streamfm's sources, and other libraries' kernels where numba puts them."""

import json
import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(r"""
    import json, os, sys
    before_env = os.environ.get("NUMBA_CACHE_DIR")
    import numba
    before_cfg = numba.config.CACHE_DIR
    sys.path.insert(0, sys.argv[1])
    import other_lib                      # a library of someone else's, cache=True
    import streamfm
    import numpy as np
    from streamfm import ftrl, numba_cache
    ftrl.gauss(np.uint64(7), 3)           # a streamfm kernel: compiled or loaded from the cache
    other_lib.twice(3)
    print(json.dumps({
        "env": [before_env, os.environ.get("NUMBA_CACHE_DIR")],
        "cfg": [before_cfg, numba.config.CACHE_DIR],
        "ours": ftrl.gauss._cache._cache_path,
        "ours_hits": sum(ftrl.gauss.stats.cache_hits.values()),
        "other": other_lib.twice._cache._cache_path,
        "dirs": numba_cache.cache_dirs(),
    }))
""")

OTHER = "from numba import njit\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n"


def probe(tmp_path, **env):
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    (lib / "other_lib.py").write_text(OTHER)
    e = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    e.update(env)
    r = subprocess.run([sys.executable, "-c", PROBE, str(lib)], capture_output=True, text=True, env=e,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_import_changes_no_numba_config_and_caches_per_source_hash(tmp_path):
    xdg = tmp_path / "xdg"
    first = probe(tmp_path, XDG_CACHE_HOME=str(xdg))
    assert first["env"] == [None, None]
    assert first["cfg"][0] == first["cfg"][1] == ""
    tagged = first["dirs"][0]
    assert tagged.startswith(str(xdg / "streamfm" / "numba-")) and len(os.path.basename(tagged)) == 22
    assert first["ours"] == tagged
    index = [n for n in os.listdir(tagged) if n.startswith("ftrl.gauss-") and n.endswith(".nbi")]
    assert index, os.listdir(tagged)
    # another library's kernel is cached where numba puts it (beside its file), not with ours
    assert first["other"] == str(tmp_path / "lib" / "__pycache__")
    assert not [n for n in os.listdir(tagged) if n.startswith("other_lib")]
    # a second process loads the kernel from that directory
    second = probe(tmp_path, XDG_CACHE_HOME=str(xdg))
    assert second["ours"] == tagged and second["ours_hits"] >= 1


def test_users_numba_cache_dir_is_respected(tmp_path):
    user = tmp_path / "numba-cache"
    got = probe(tmp_path, NUMBA_CACHE_DIR=str(user), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    assert got["env"] == [str(user), str(user)] and got["cfg"] == [str(user), str(user)]
    assert got["ours"].startswith(str(user / "streamfm-numba-"))
    # numba's own rule for everything else: the user's directory
    assert got["other"].startswith(str(user)) and "streamfm" not in got["other"]
